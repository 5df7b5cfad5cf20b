"""Benchmark: our batched encoding vs the original tutorial's per-example ``Dataset.map``,
then the padding table of both encodings, on the real 3,729-row dataset.

    python -m bench.encode_and_padding [--data PATH] [--repeats N] [--json OUT.json]

Both encoders run in the same process, best of N repeats each, so the ratio compares
like with like on whatever machine runs it. The data defaults to ``$HUANHUAN_JSON`` or
``../shared/data/huanhuan.json`` (it is never copied into the repository).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from bench.common import expected_padded_tokens, real_dataset_path
from helpers.data import encode_records
from helpers.data_files import to_dataset
from helpers.models import course_tokenizer
from helpers.original import original_process_func
from helpers.padding import (
    PaddingRow,
    format_padding_table,
    length_stats,
    padding_table,
)
from helpers.validation import load_records
from helpers.workspace import display_path

TARGET_RATIO = 10.0


def interleaved_best(repeats: int, **functions):
    """Best wall-clock and best CPU seconds of each function over ``repeats`` rounds, and its last result.

    The functions take turns within each round, so a busy machine slows them alike.
    """
    wall = dict.fromkeys(functions, float("inf"))
    cpu = dict.fromkeys(functions, float("inf"))
    results = {}
    for _ in range(repeats):
        for name, fn in functions.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            results[name] = fn()
            wall[name] = min(wall[name], time.perf_counter() - start)
            cpu[name] = min(cpu[name], time.process_time() - start_cpu)
    return wall, cpu, results


def run(path: Path, repeats: int) -> dict:
    import datasets

    datasets.disable_progress_bars()
    tokenizer, _ = course_tokenizer()
    records = load_records(path).records
    raw = datasets.Dataset.from_list(records)

    def original():
        return raw.map(lambda ex: original_process_func(ex, tokenizer),
                       remove_columns=raw.column_names, load_from_cache_file=False)

    def ours():
        samples, _ = encode_records(records, tokenizer)
        return to_dataset(samples)

    ours()  # warm-up: the tokenizer's first batched call pays one-off set-up costs
    best, cpu, results = interleaved_best(repeats, original=original, ours=ours)
    original_ds, ours_ds = results["original"], results["ours"]
    assert len(original_ds) == len(ours_ds) == len(records)
    lengths = {"original": [len(x) for x in original_ds["input_ids"]],
               "ours": [len(x) for x in ours_ds["input_ids"]]}
    return {
        "data": display_path(path), "rows": len(records), "repeats": repeats,
        "original_map_s": best["original"], "ours_s": best["ours"], "ratio": best["original"] / best["ours"],
        "target_ratio": TARGET_RATIO, "original_map_cpu_s": cpu["original"], "ours_cpu_s": cpu["ours"],
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "lengths": {name: length_stats(values) for name, values in lengths.items()},
        "padding": {name: [{"strategy": r.strategy, "description": r.description, "computed": r.computed,
                            "real": r.real, "padding": r.padding, "padding_share": round(r.padding_share, 4)}
                           for r in padding_table(values, batch_size=4, seed=0)]
                    for name, values in lengths.items()},
        "expected_random_padded": {name: expected_padded_tokens(values) for name, values in lengths.items()},
    }


def report(result: dict) -> str:
    verdict = "OK" if result["ratio"] >= result["target_ratio"] else "BELOW TARGET"
    lines = [
        f"encode {result['rows']} rows of {result['data']} (best of {result['repeats']}):",
        f"  original per-example Dataset.map(process_func): {result['original_map_s']:.3f} s",
        f"  ours (encode_records + to_dataset):             {result['ours_s']:.3f} s",
        f"  speed-up: {result['ratio']:.1f}x (target >= {result['target_ratio']:.0f}x: {verdict})",
        f"  CPU time: original {result['original_map_cpu_s']:.3f} s, ours {result['ours_cpu_s']:.3f} s "
        "(ours includes the Rust tokenizer's worker threads)",
    ]
    if result["load_average"] is not None and result["load_average"] > (result["machine"]["cpus"] or 1):
        lines.append(f"  warning: load average {result['load_average']:.1f} on {result['machine']['cpus']} CPUs: "
                     "other work competes for the CPUs, so these timings are not reliable; rerun when idle")
    for name, title in (("original", "the original's encoding (<s> ... <|endoftext|>)"),
                        ("ours", "our encoding (chat template, <|im_end|>)")):
        stats = result["lengths"][name]
        rows = [PaddingRow(r["strategy"], r["description"], r["computed"], r["real"])
                for r in result["padding"][name]]
        lines += [
            "",
            f"padding per epoch, batches of 4, {title}: mean {stats['mean']:.1f} tokens, max {stats['max']}",
            format_padding_table(rows),
            f"(random batches: seed 0; the average over all random orders is "
            f"{result['expected_random_padded'][name]:,.0f} tokens)",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="huanhuan.json (default: $HUANHUAN_JSON or ../shared/data)")
    parser.add_argument("--repeats", type=int, default=5, help="best of N runs of each encoder (default 5)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    try:
        args.data = args.data or real_dataset_path(os.environ)
    except FileNotFoundError as err:
        parser.error(str(err))
    if not args.data.is_file():
        parser.error(f"{args.data} 不存在：用 --data 指定 huanhuan.json，或者设置 HUANHUAN_JSON")
    result = run(args.data, args.repeats)
    print(report(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
