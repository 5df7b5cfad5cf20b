"""Benchmarks: the original tutorial's recipe against the course's, every figure a ratio.

``python -m bench.cpu`` runs, in ONE process on the CPU (a few minutes on 2 cores):

1. **encode**  - the original's preprocessing (``Dataset.map(process_func)``, one example
   at a time) against ours (``data.encode_records``: batched, template rendered once);
2. **padding** - tokens computed per epoch on the real dataset: the original's encoding
   in random batches of 4 padded to the longest, against ours packed (padding-free);
   (1 and 2 are ``bench/encode_and_padding.py``'s run, reused as is);
3. **train**   - training throughput (real tokens/s, samples/s) of the original recipe
   (its encoding, padded batches 4 x accumulation 4, activation checkpointing ON)
   against ours (our encoding, padding-free batches of 16 x 1, checkpointing OFF),
   both through the course's own ``helpers.train.build_trainer`` on the tiny model,
   after a warm-up, best of N interleaved repeats (``bench.common.measure_training``).

Every reported figure is a ratio of two sides measured in the same run, so the noise
of a shared machine cancels as far as it can. On the tiny model most of the work is
the 151,936-wide output layer, so the CPU training ratio mostly reflects the number
of tokens computed (padding); activation checkpointing costs little there. The GPU
benchmark for the real Qwen3-8B architecture is ``bench/gpu_qwen3_8b.py``; it shares
the recipes, the counting and the FLOP formula (``bench/common.py``).

Notebook 04 shows the same tokens-per-epoch table with ``helpers.padding.tokens_per_epoch_table``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from bench.common import format_tokens_table, real_dataset_path
from helpers.padding import PaddingRow
from helpers.validation import load_records
from helpers.workspace import REPO_ROOT, display_path

from .common import (
    COURSE_RECIPE,
    CPU_RECIPES,
    ORIGINAL_RECIPE,
    QUICK_RECIPES,
    environment,
    loss_equivalence,
    measure_training,
    write_result,
)

#: the training config whose numbers (LoRA, system prompt, max_length) the CPU benchmark uses
TINY_CONFIG = REPO_ROOT / "configs" / "train" / "tiny.yaml"


# --------------------------------------------------------------------------- 1 + 2. encode speed, padding


def bench_encode_and_padding(path: Path, repeats: int = 3) -> tuple[dict, dict]:
    """Encode speed and padding waste on the real dataset: ``bench/encode_and_padding.py``'s own run.

    Encode: the original's per-example ``Dataset.map(process_func)`` vs ``encode_records``
    (+ ``to_dataset``), interleaved, best of ``repeats``. Padding: tokens per epoch of the
    original (its encoding, random batches of 4 padded, seed 0) vs ours packed.
    """
    from .encode_and_padding import run

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
        PaddingRow("original", "原教程：它的编码，随机 4 条一批，补齐到最长",
                   original["random"]["computed"], original["random"]["real"]),
        PaddingRow("ours_random", "本课程的编码，随机 4 条一批，补齐", ours["random"]["computed"], ours["random"]["real"]),
        PaddingRow("ours_grouped", "本课程的编码，按长度分组 4 条一批，补齐",
                   ours["group_by_length"]["computed"], ours["group_by_length"]["real"]),
        PaddingRow("ours_packed", "本课程的编码，无填充（packing） <- 课程默认",
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


def bench_train(records: list[dict], tokenizer, spec, recipes=CPU_RECIPES, warmup: int = 2, steps: int = 6,
                repeats: int = 2) -> dict:
    """Each recipe ``repeats`` times, interleaved; best (highest real tokens/s) run of each."""
    import torch

    runs: dict[str, list[dict]] = {r.name: [] for r in recipes}
    for _ in range(repeats):
        for recipe in recipes:
            runs[recipe.name].append(measure_training(recipe, records, tokenizer, spec, device="cpu",
                                                      warmup=warmup, steps=steps))
    best = {name: max(rs, key=lambda r: r["real_tokens_per_s"]) for name, rs in runs.items()}
    base = best[recipes[0].name]
    for result in best.values():
        result["speedup_real_tokens_per_s"] = result["real_tokens_per_s"] / base["real_tokens_per_s"]
        result["speedup_samples_per_s"] = result["samples_per_s"] / base["samples_per_s"]
        result["all_runs_real_tokens_per_s"] = [r["real_tokens_per_s"] for r in runs[result["recipe"]["name"]]]
    return {"rows": len(records), "warmup_steps": warmup, "measured_steps": steps, "repeats": repeats,
            "torch_threads": torch.get_num_threads(), "recipes": best}


# --------------------------------------------------------------------------- the whole CPU benchmark


def run_cpu_benchmark(spec, dataset: Path, quick: bool = False, train_rows: int | None = None,
                      repeats: int | None = None, steps: int | None = None, warmup: int | None = None,
                      all_recipes: bool = False) -> dict:
    """All three CPU benchmarks in one process on the tiny profile's ``spec``; returns the JSON-able result."""
    from transformers.utils import logging as hf_logging

    from helpers.download import prepare_model
    from helpers.models import load_tokenizer

    hf_logging.disable_progress_bar()
    prepare_model(spec)
    tokenizer = load_tokenizer(spec)
    records = load_records(dataset).records
    started = time.perf_counter()
    result = {
        "benchmark": "bench.cpu",
        "quick": quick,
        "profile": spec.profile.name,
        "dataset": {"path": display_path(dataset), "rows": len(records)},
        "environment": environment(),
    }
    result["encode"], result["padding"] = bench_encode_and_padding(dataset, repeats=1 if quick else 3)
    train_records = records[: train_rows or (32 if quick else 256)]
    result["loss_equivalence"] = loss_equivalence(train_records, tokenizer, spec)
    recipes = QUICK_RECIPES if quick else (CPU_RECIPES if all_recipes else (ORIGINAL_RECIPE, COURSE_RECIPE))
    result["train"] = bench_train(
        train_records, tokenizer, spec, recipes=recipes,
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
        f"== bench.cpu ({result['environment']['cpu_count']} cores, torch threads "
        f"{result['environment']['torch_threads']}); every ratio is from this one run",
        "",
        f"1. encode {enc['rows']} rows (best of {enc['repeats']}):",
        f"   original Dataset.map(process_func)  {enc['original_s']:8.3f} s  {enc['original_rows_per_s']:10,.0f} rows/s",
        f"   ours encode_records                 {enc['ours_s']:8.3f} s  {enc['ours_rows_per_s']:10,.0f} rows/s",
        f"   speed-up                            {enc['speedup']:8.1f}x",
        "",
        f"2. tokens computed per epoch, {pad['rows']} rows (seed {pad['seed']}):",
        *("   " + line for line in format_tokens_table([_row(r) for r in pad["table"]]).splitlines()),
        f"   ours computes {1 / pad['computed_tokens_ratio']:.1%} of the original's tokens "
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
        "   reflect tokens computed; checkpointing's recompute is cheap here. GPU: python -m bench.gpu_qwen3_8b.",
        "",
        "ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in result["ratios"].items()),
        f"wall time {result['wall_s']:.0f} s",
    ]
    return "\n".join(lines)


def _row(entry: dict) -> PaddingRow:
    return PaddingRow(entry["strategy"], entry["description"], entry["computed"], entry["real"])


def main(argv: list[str] | None = None) -> int:
    from helpers.errors import run_cli
    from helpers.spec import build_spec

    parser = argparse.ArgumentParser(
        prog="python -m bench.cpu",
        description="Original tutorial vs course recipe on the CPU: encode speed, padding waste, "
                    "training throughput (tiny model). Prints a table and writes JSON.")
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke test (well under a minute)")
    parser.add_argument("--out", help="JSON result path (default <workspace>/bench/cpu.json)")
    parser.add_argument("--data", help="the real huanhuan.json (default: $HUANHUAN_JSON or ../shared/data)")
    parser.add_argument("--train-rows", type=int, help="rows of the real set to train on (default 256; quick 32)")
    parser.add_argument("--repeats", type=int, help="interleaved repeats per training recipe (default 2; quick 1)")
    parser.add_argument("--steps", type=int, help="measured optimizer steps (default 3; quick 2)")
    parser.add_argument("--warmup", type=int, help="warm-up optimizer steps (default 1)")
    parser.add_argument("--all-recipes", action="store_true",
                        help="also time the intermediate recipe (padding-free 4 x 4 with checkpointing)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)

    def work() -> int:
        spec = build_spec(TINY_CONFIG, profile="tiny", env=os.environ)
        try:
            dataset = Path(args.data) if args.data else real_dataset_path(os.environ)
        except FileNotFoundError as err:
            parser.error(str(err))
        result = run_cpu_benchmark(spec, dataset, quick=args.quick, train_rows=args.train_rows,
                                   repeats=args.repeats, steps=args.steps, warmup=args.warmup,
                                   all_recipes=args.all_recipes)
        out = write_result(result, args.out or spec.paths.workspace / "bench" / "cpu.json")
        print(format_cpu_report(result))
        print(f"JSON: {display_path(out)}")
        return 0

    return run_cli(work, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
