"""What the benchmarks share: the recipes, the batch counter, one timed training run, the FLOP formula.

Every function takes the run spec built at the benchmark's edge (its ``main``); nothing here
reads the environment. Training goes through the course's own ``helpers.train.build_trainer``,
so a benchmark measures the code a learner runs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import MappingProxyType

from helpers.data import IGNORE_INDEX, encode_records
from helpers.data_files import HUANHUAN_SHA256
from helpers.errors import CourseError
from helpers.original import original_process_func
from helpers.padding import PaddingRow, display_width, pad_text, padding_table
from helpers.spec import build_spec
from helpers.workspace import REPO_ROOT, display_path, sha256_file

#: The original tutorial's own report (Qwen3-8B, huanhuan, 3 epochs, 699 steps; GPU not stated).
ORIGINAL_REPORTED = {"train_runtime_s": 880.0, "train_samples_per_second": 12.713, "steps": 699, "epochs": 3}


# --------------------------------------------------------------------------- data


def real_dataset_path(env) -> Path:
    """The real 3,729-row set for tests and benchmarks (their edges pass ``os.environ``).

    ``$HUANHUAN_JSON``, else ``../shared/data/huanhuan.json`` beside the repository, else the course's own copy
    (the ``full`` profile's dataset: ``<workspace>/data/huanhuan.json`` or the ``dataset`` setting) when it is the
    pinned file.
    """
    candidates = [Path(env["HUANHUAN_JSON"]).expanduser()] if env.get("HUANHUAN_JSON") else []
    candidates.append(REPO_ROOT.parent / "shared" / "data" / "huanhuan.json")
    for path in candidates:
        if path.is_file():
            return path
    try:
        course = build_spec(profile="full", env=env).paths.dataset
    except CourseError:        # settings that do not build: the other places were all there was
        course = None
    if course is not None and course.is_file() and sha256_file(course) == HUANHUAN_SHA256:
        return course
    raise FileNotFoundError(
        f"这里需要真实的 huanhuan.json（3,729 条）：{display_path(candidates[-1])}"
        + (f" 和 {display_path(course)}" if course is not None else "") + " 都没有。"
        "把它放到后者，设置 HUANHUAN_JSON=它的路径，或者用 --data 指定（下载地址见 docs/teaching.md 第 4 节）。")


def course_workspace(env) -> Path:
    """The learner's workspace (settings file, ``QWEN3_TUTORIAL_WORKSPACE``): where CPU rehearsals write by default;
    ``bench/results/`` holds only the committed GPU runs."""
    return build_spec(REPO_ROOT / "configs" / "train" / "tiny.yaml", profile="tiny", env=env).paths.workspace


def read_result(parser, path: str | os.PathLike, keys: tuple[str, ...]) -> dict:
    """A result JSON named on the command line (``--table``, ``--adopt``) that holds ``keys``, or argparse's
    one-line refusal."""
    try:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        parser.error(f"{path}: {err.strerror}")
    except ValueError as err:
        parser.error(f"{path}: not a result JSON ({err})")
    missing = [key for key in keys if key not in result] if isinstance(result, dict) else list(keys)
    if missing:
        parser.error(f"{path}: not a result of {parser.prog} (no {', '.join(missing)})")
    return result


# --------------------------------------------------------------------------- tokens per epoch: the original vs the course


def encoded_lengths(records: list[dict], tokenizer) -> tuple[list[int], list[int]]:
    """Token lengths of every record: (the original tutorial's encoding, the course's encoding).

    The original cuts rows at 1024 tokens (``original_process_func``); the course's encoder
    (``encode_records`` with its defaults) drops rows longer than ``max_length`` instead.
    """
    original = [len(original_process_func(record, tokenizer)["input_ids"]) for record in records]
    ours = [len(sample["input_ids"]) for sample in encode_records(records, tokenizer)[0]]
    return original, ours


def expected_padded_tokens(lengths: list[int], batch_size: int = 4) -> float:
    """Exact mean, over all random orders, of the tokens computed when each batch is padded to its longest."""
    ordered, n = sorted(lengths), len(lengths)

    def mean_max(k: int) -> float:  # element i is the max of a k-subset in C(i, k-1) of C(n, k) cases
        return sum(x * math.comb(i, k - 1) for i, x in enumerate(ordered)) / math.comb(n, k)

    full, rest = divmod(n, batch_size)
    return full * batch_size * mean_max(batch_size) + (rest * mean_max(rest) if rest else 0.0)


def tokens_per_epoch_table(tokenizer, records: list[dict], batch_size: int = 4, seed: int = 0,
                           lengths: tuple[list[int], list[int]] | None = None) -> list[PaddingRow]:
    """Tokens one epoch computes: the original (its encoding, random padded batches) -> ours (packed).

    Rows: the original; our encoding in the same random padded batches (what the encoding
    alone saves); ours length-grouped; ours padding-free (the course's batching). Both sides
    use :func:`padding_table` with the same seed, so the random orders are identical.
    """
    original, ours = lengths or encoded_lengths(records, tokenizer)
    o_rows = {r.strategy: r for r in padding_table(original, batch_size=batch_size, seed=seed)}
    c_rows = {r.strategy: r for r in padding_table(ours, batch_size=batch_size, seed=seed)}
    return [
        PaddingRow("original", f"原教程：它的编码，随机 {batch_size} 条一批，补齐到最长",
                   o_rows["random"].computed, o_rows["random"].real),
        PaddingRow("ours_random", f"本课程的编码，随机 {batch_size} 条一批，补齐",
                   c_rows["random"].computed, c_rows["random"].real),
        PaddingRow("ours_grouped", f"本课程的编码，按长度分组 {batch_size} 条一批，补齐",
                   c_rows["group_by_length"].computed, c_rows["group_by_length"].real),
        PaddingRow("ours_packed", "本课程的编码，无填充（packing） <- 课程默认",
                   c_rows["packing"].computed, c_rows["packing"].real),
    ]


def format_tokens_table(rows: list[PaddingRow]) -> str:
    """The tokens-per-epoch table (Chinese headers); the last column is each row's computed tokens / the first row's."""
    head = ("批次方式", "计算的 token", "真实 token", "填充", "填充占比", "相对原教程")
    body = [(r.description, f"{r.computed:,}", f"{r.real:,}", f"{r.padding:,}", f"{r.padding_share:.1%}",
             f"{r.computed / rows[0].computed:.1%}") for r in rows]
    widths = [max(display_width(row[i]) for row in (head, *body)) for i in range(len(head))]
    lines = []
    for row in (head, *body):
        cells = [pad_text(row[0], widths[0])] + [pad_text(cell, width, right=True) for cell, width in zip(row[1:], widths[1:],
                                                                                                   strict=True)]
        lines.append("  ".join(cells))
    return "\n".join(lines)



def original_samples(records: list[dict], tokenizer) -> list[dict]:
    """The original's encoding (literal ``<s>``, pad token as end, cut at 1024), with each row's index."""
    out = []
    for index, record in enumerate(records):
        sample = original_process_func(record, tokenizer)
        sample["row"] = index
        out.append(sample)
    return out


def course_samples(records: list[dict], tokenizer, spec=None) -> list[dict]:
    """The course's encoding (``encode_records``, with the spec's system prompt and max_length when given)."""
    if spec is None:
        return encode_records(records, tokenizer)[0]
    return encode_records(records, tokenizer, spec.data.system_prompt, spec.data.max_length)[0]


def encode(kind: str, records: list[dict], tokenizer, spec=None) -> list[dict]:
    if kind == "original":
        return original_samples(records, tokenizer)
    if kind == "ours":
        return course_samples(records, tokenizer, spec)
    raise ValueError(f"encoding must be 'original' or 'ours', not {kind!r}")


def as_train_dataset(samples: list[dict]):
    """The Trainer's dataset: ``helpers.train.to_train_dataset`` (a ``datasets.Dataset``) when the
    ``datasets`` package imports, else the list of samples itself (the Trainer accepts any sized
    sequence). A GPU box without pyarrow still trains."""
    try:
        from helpers.train import to_train_dataset

        return to_train_dataset(samples)
    except ImportError:
        return [dict(s, row=s.get("row", i)) for i, s in enumerate(samples)]


# --------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class Recipe:
    """One way to train: encoding, batching, micro-batch, accumulation, checkpointing, kernels."""

    name: str
    description: str
    encoding: str = "ours"              # original | ours
    batching: str = "packed"            # packed | padded | grouped (helpers.train.make_collator)
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

#: course-config keys a timed run replaces (it trains a fixed number of steps, saves and evaluates nothing)
_DROPPED_TRAINING_KEYS = ("save_total_limit", "eval_strategy", "eval_steps", "warmup_ratio")


def recipe_spec(spec, recipe: Recipe, steps: int, output_dir: str | os.PathLike, bf16: bool, seed: int = 42):
    """The course's spec with the recipe's batching and shape, ``steps`` steps, constant lr, no tracking."""
    training = {k: v for k, v in spec.training.items() if k not in _DROPPED_TRAINING_KEYS}
    training.update(
        per_device_train_batch_size=recipe.per_device_train_batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps,
        activation_checkpointing=recipe.activation_checkpointing,
        max_steps=steps, learning_rate=1e-4, lr_scheduler_type="constant", warmup_steps=0,
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, bf16=bf16, seed=seed,
    )
    return spec.replace(
        batching=recipe.batching,
        training=MappingProxyType(training),
        data=dataclasses.replace(spec.data, eval_fraction=0.0),
        swanlab=dataclasses.replace(spec.swanlab, enabled=False),
    ).with_run_dir(output_dir)


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
            self.trained += int((labels != IGNORE_INDEX).sum())
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
    spec,
    *,
    device: str | None = None,
    warmup: int = 2,
    steps: int = 6,
    deadline: float | None = None,
    model=None,
) -> dict:
    """Train ``warmup + steps`` optimizer steps with the course's Trainer; time the last ``steps``.

    Returns samples/s, real and computed tokens/s over the measured steps and the mean loss
    over them. ``deadline`` (a ``time.perf_counter()`` value) stops early, after at least
    ``warmup + 1`` steps.
    """
    import torch
    from transformers.trainer_callback import PrinterCallback

    from helpers import train
    from helpers.models import load_base_model

    def sync():
        if torch.cuda.is_available() and device != "cpu":
            torch.cuda.synchronize()

    samples = encode(recipe.encoding, records, tokenizer, spec)
    bf16 = device not in (None, "cpu") and torch.cuda.is_available() and spec.profile.dtype == "bfloat16"
    with tempfile.TemporaryDirectory(prefix=f"bench-{recipe.name}-") as out:
        run_spec = recipe_spec(spec, recipe, warmup + steps, out, bf16=bf16)
        if model is None:
            model = load_base_model(run_spec, device=device, for_training=True)
        model.config.use_cache = False
        notes = apply_kernels(model, recipe)
        model = train.add_lora(run_spec, model)
        counter = BatchCounter()
        handle = model.register_forward_pre_hook(counter, with_kwargs=True)
        marks: list = []
        trainer = train.build_trainer(run_spec, model, tokenizer, as_train_dataset(samples))
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


def loss_equivalence(records: list[dict], tokenizer, spec, rows: int = 16) -> dict:
    """The loss of the same rows padded vs packed (eval mode, no dropout): they must agree."""
    import torch

    from helpers import train
    from helpers.models import load_base_model

    samples = course_samples(records[:rows], tokenizer, spec)
    model = load_base_model(spec, device="cpu").eval()
    features = [{"input_ids": s["input_ids"], "labels": s["labels"]} for s in samples]
    with torch.no_grad():
        # use_cache=False as under the Trainer: only then are packed position_ids read as
        # separate sequences (with a cache the model would attend across them)
        padded = model(**train.make_collator("padded", tokenizer)(features), use_cache=False).loss.item()
        packed = model(**train.make_collator("packed", tokenizer)(features), use_cache=False).loss.item()
    return {"rows": len(samples), "loss_padded": padded, "loss_packed": packed, "abs_diff": abs(padded - packed)}


# --------------------------------------------------------------------------- FLOPs and peaks

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


def _dims(config) -> tuple[int, int, int, int]:
    h = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    return h, config.intermediate_size, config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim


def matmul_parameters(config) -> dict[str, int]:
    """Weights that take part in matrix products, per kind, from a Qwen3 config (embeddings excluded)."""
    h, inter, q, kv = _dims(config)
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * inter
    return {"layers": per_layer * config.num_hidden_layers, "lm_head": config.vocab_size * h,
            "attention_width": q, "num_layers": config.num_hidden_layers}


def lora_parameters(config, lora) -> int:
    """Trainable LoRA parameters: r x (in + out) for every target module in every layer (``lora``: a LoraSpec)."""
    h, inter, q, kv = _dims(config)
    shapes = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
              "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
    per_layer = sum(lora.r * (a + b) for name, (a, b) in shapes.items() if name in lora.target_modules)
    return per_layer * config.num_hidden_layers


def lora_flop_coefficients(config, lora) -> tuple[float, float]:
    """(FLOPs per real token, FLOPs per unit of sum L(L+1)) of LoRA training; see :func:`lora_training_flops`."""
    params = matmul_parameters(config)
    frozen = params["layers"] + params["lm_head"]
    return 4.0 * frozen + 6.0 * lora_parameters(config, lora), 6.0 * params["num_layers"] * params["attention_width"]


def lora_training_flops(config, lengths, lora) -> float:
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


# --------------------------------------------------------------------------- environment and results


def versions() -> dict:
    """Versions of what the benchmarks run on (None: not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "accelerate", "datasets", "bitsandbytes", "liger-kernel",
                 "flash-attn", "triton"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def environment() -> dict:
    import torch

    return {**versions(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(), "processor": platform.processor() or platform.machine()}


def write_result(result: dict, path: str | os.PathLike) -> Path:
    """Write a benchmark's JSON (atomically: a killed run never leaves half a file); return where it went."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(partial, out)
    return out
