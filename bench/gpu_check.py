"""One prepared GPU check: the course's whole real path on the Qwen3-8B architecture, in one script.

    python -m bench.gpu_check --dataset PATH --out bench/results/gpu_check.json      # one H100/H200, < 8 min
    python -m bench.gpu_check --tiny               # same stages, CPU, tiny: <workspace>/bench/gpu_check-tiny.json
    python -m bench.gpu_check --table bench/results/gpu_check.json                   # markdown for RESULTS.md

The ``random8b`` profile: the real Qwen3-8B architecture with random bf16 weights (no download; speed and
memory do not depend on the weights' values), trained with the course recipe (``configs/train/qwen3-8b.yaml``)
on the real dataset. Stages, each with its wall time and its own peak memory
(``torch.cuda.max_memory_allocated``, reset between stages):

1. ``train_bf16`` - bf16 LoRA, N optimizer steps, through the course's step functions
   (``helpers.train``: training_data, load_model_for_training, add_lora, build_trainer), saving checkpoint-N;
2. ``resume``     - a new process state resumes from checkpoint-N (``runs.resume_point``) for R more steps;
3. ``generate``   - ``inference.load_finetuned`` + ``inference.stream_generate`` (greedy), checked against
   ``inference.generate``;
4. ``merge``      - ``merge_and_unload`` on the loaded model; logits before and after must agree;
5. ``export``     - ``export.export_merged`` (a 16 GB folder; optional);
6. ``qlora``      - the same N steps with ``quantization: nf4`` (bitsandbytes), peak memory vs bf16 (optional);
7. ``recipes``    - ``bench.gpu_qwen3_8b``'s recipes (original vs padding-free ...), one subprocess each (optional).

A failing stage is recorded with its error and the next stage runs; the JSON is rewritten after every
stage, so a run killed by a time limit still leaves its results. Optional stages are skipped once
``--guard-s`` seconds (default 390 = 6.5 min) have passed. Without CUDA (or with ``--tiny``) the same
stages run on the tiny profile on the CPU with tiny step counts (``tests/test_gpu_check.py``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from helpers import data, runs
from helpers.workspace import REPO_ROOT, display_path

from .common import as_train_dataset, course_workspace, read_result, versions, write_result

CONFIGS = {"random8b": REPO_ROOT / "configs" / "train" / "qwen3-8b.yaml",
           "tiny": REPO_ROOT / "configs" / "train" / "tiny.yaml"}
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "gpu_check.json"
STAGES = ("train_bf16", "resume", "generate", "merge", "export", "qlora", "recipes")
OPTIONAL = ("export", "qlora", "recipes")
#: stage -> seconds it needs at least on the GPU; an optional stage is skipped when they are not left
GPU_STAGE_NEEDS_S = {"export": 90, "qlora": 90, "recipes": 75}
QUESTION = "你是谁？"


# --------------------------------------------------------------------------- memory and stages


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def reset_memory() -> None:
    """Free what earlier stages left and start a new peak."""
    import torch

    gc.collect()
    if _cuda():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def memory() -> dict:
    """Peak GPU memory since the last reset (GiB and GB), and this process's resident memory."""
    import psutil
    import torch

    out = {"rss_gib": round(psutil.Process().memory_info().rss / 2**30, 3)}
    if _cuda():
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        out.update(peak_allocated_gib=round(peak / 2**30, 3), peak_allocated_gb=round(peak / 1e9, 3),
                   peak_reserved_gib=round(torch.cuda.max_memory_reserved() / 2**30, 3),
                   allocated_after_gib=round(torch.cuda.memory_allocated() / 2**30, 3))
    return out


class Check:
    """Runs the stages, times them, records their memory and errors, and rewrites the JSON after each."""

    def __init__(self, out: Path, result: dict, guard_s: float, needs_s: dict[str, float]):
        self.out, self.result, self.guard_s, self.needs_s = out, result, guard_s, needs_s
        self.started = time.perf_counter()
        self.state: dict = {}
        result.setdefault("stages", {})

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def stage(self, name: str, fn, skip: str | None = None) -> None:
        record: dict = {}
        left = self.guard_s - self.elapsed()
        if skip:
            record["status"] = f"skipped: {skip}"
        elif name in OPTIONAL and left < self.needs_s.get(name, 0):
            record["status"] = (f"skipped: time guard ({self.elapsed():.0f} s elapsed of {self.guard_s:.0f} s; "
                                f"the stage needs about {self.needs_s.get(name, 0):.0f} s)")
        else:
            print(f"== {name} ({self.elapsed():.0f} s elapsed)", flush=True)
            reset_memory()
            began = time.perf_counter()
            try:
                record.update(fn() or {})
                record["status"] = record.get("status", "ok")
            except Exception as err:  # noqa: BLE001 - one stage failing must not stop the others
                record.update(status="error", error=f"{type(err).__name__}: {err}"[:2000],
                              traceback=traceback.format_exc()[-3000:])
            record["wall_s"] = round(time.perf_counter() - began, 2)
            record.update(memory())
        print(f"   {name}: {record['status']}" + (f" - {record.get('error', '')[:300]}" if record["status"] == "error"
                                                  else ""), flush=True)
        self.result["stages"][name] = record
        self.result["wall_s"] = round(self.elapsed(), 1)
        write_result(scrubbed(self.result), self.out)


def scrubbed(result: dict) -> dict:
    """The result with this machine's repository and home folders taken out of error texts and tracebacks."""
    text = json.dumps(result, ensure_ascii=False, default=str)
    for folder, shown in ((REPO_ROOT, "."), (Path.home(), "~")):
        text = text.replace(json.dumps(str(folder))[1:-1], shown)
    return json.loads(text)


# --------------------------------------------------------------------------- the course's steps


class _MemorySeen:
    """Collects the ``memory_gib`` the course's MemoryLog callback adds to each log line."""

    def __new__(cls, seen: list):
        from transformers import TrainerCallback

        class Seen(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "memory_gib" in logs:
                    seen.append(logs["memory_gib"])
                return control

        return Seen()


def train_steps(spec, resume_from: Path | None = None) -> tuple[object, dict]:
    """The course's training steps (as ``helpers.train.train`` runs them, without tracking and plotting)."""
    from helpers import data, train
    from helpers.download import prepare_model
    from helpers.models import load_tokenizer

    prepare_model(spec)
    tokenizer = load_tokenizer(spec)
    samples, eval_samples = data.training_data(spec, tokenizer, verbose=False)
    began = time.perf_counter()
    model = train.add_lora(spec, train.load_model_for_training(spec))
    load_s = time.perf_counter() - began
    trainer = train.build_trainer(spec, model, tokenizer, as_train_dataset(samples),
                                  as_train_dataset(eval_samples) if eval_samples else None)
    logged_memory: list[float] = []
    trainer.add_callback(_MemorySeen(logged_memory))  # runs after the course's MemoryLog, which fills memory_gib
    began = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    train_s = time.perf_counter() - began
    losses = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
    memory_log = logged_memory
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainer, {
        "rows_encoded": len(samples),
        "global_step": trainer.state.global_step,
        "model_load_s": round(load_s, 2),
        "train_s": round(train_s, 2),
        "train_samples_per_second": output.metrics.get("train_samples_per_second"),
        "losses": losses,
        "memory_gib_logged": max(memory_log) if memory_log else None,
        "trainable_parameters": trainable,
        "effective_batch_size": runs.effective_batch(trainer.args.per_device_train_batch_size, trainer.args.gradient_accumulation_steps, trainer.args.world_size),
        "activation_checkpointing": bool(spec.training.get("activation_checkpointing")),
    }


def _drop(state: dict, *keys: str) -> None:
    """Free a stage's models; the peak counter stays, so the stage's record still holds its peak."""
    import torch

    for key in keys:
        state.pop(key, None)
    gc.collect()
    if _cuda():
        torch.cuda.empty_cache()


def stage_train(check: Check, spec, steps: int) -> dict:
    from helpers import checkpoints

    trainer, info = train_steps(spec)
    found = checkpoints.latest_good_checkpoint(spec.paths.run_dir).checkpoint
    if found is None or found.name != f"checkpoint-{steps}":
        raise RuntimeError(f"expected a complete checkpoint-{steps} in the run folder, found {found}")
    check.state["checkpoint"] = found
    first_rows = _sample_log_rows(spec)
    check.state["first_rows"] = first_rows[0] if first_rows else None
    del trainer
    _drop(check.state)
    return {**info, "checkpoint": found.name, "checkpoint_files": sorted(p.name for p in found.iterdir())}


def _sample_log_rows(spec) -> list[list[int]]:
    from helpers.runs import SAMPLE_LOG

    path = spec.paths.run_dir / SAMPLE_LOG
    if not path.is_file():
        return []
    return [json.loads(line)["rows"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def stage_resume(check: Check, spec, steps: int, more: int) -> dict:

    if "checkpoint" not in check.state:
        raise RuntimeError("needs the checkpoint of train_bf16, which failed")
    calls_before = len(_sample_log_rows(spec))
    point = runs.resume_point(spec, True)
    if point is None or point.name != f"checkpoint-{steps}":
        raise RuntimeError(f"resume_point found {point}, expected checkpoint-{steps}")
    trainer, info = train_steps(spec, resume_from=point)
    after = [step for step, _ in info["losses"] if step > steps]
    rows = _sample_log_rows(spec)[calls_before:]
    latest = runs.resume_point(spec, True)
    check.state["checkpoint"] = latest
    del trainer
    _drop(check.state)
    return {**info, "resumed_from": point.name, "steps_after_resume": after,
            "resumed_steps_ok": after == list(range(steps + 1, steps + more + 1)),
            "first_rows_of_run": check.state.get("first_rows"), "first_rows_after_resume": rows[0] if rows else None,
            "checkpoint": latest.name if latest else None}


def stage_generate(check: Check, spec, max_new_tokens: int) -> dict:
    from helpers import inference

    if check.state.get("checkpoint") is None:
        raise RuntimeError("needs a checkpoint from train_bf16/resume, which failed")
    began = time.perf_counter()
    loaded = inference.load_finetuned(spec, check.state["checkpoint"])
    load_s = time.perf_counter() - began
    settings = inference.greedy_settings(max_new_tokens=max_new_tokens)
    messages = inference.chat_messages([], QUESTION, loaded.system_prompt)
    pieces, first = [], None
    began = time.perf_counter()
    for piece in inference.stream_generate(loaded.model, loaded.tokenizer, messages, settings):
        if first is None:
            first = time.perf_counter() - began
        pieces.append(piece)
    stream_s = time.perf_counter() - began
    text = "".join(pieces)
    whole = inference.generate(loaded.model, loaded.tokenizer, messages, settings)
    new_tokens = len(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])
    check.state["loaded"] = loaded
    return {"adapter": loaded.checkpoint.name, "notes": loaded.notes, "load_s": round(load_s, 2),
            "pieces": len(pieces), "new_tokens": new_tokens, "first_piece_s": round(first or 0.0, 3),
            "stream_s": round(stream_s, 3), "tokens_per_s": round(new_tokens / stream_s, 2) if stream_s else None,
            "same_as_generate": data.split_thinking(text) == whole,
            "text": text[:200]}


def stage_merge(check: Check) -> dict:
    import torch

    loaded = check.state.get("loaded")
    if loaded is None:
        raise RuntimeError("needs the adapter loaded by generate, which failed")
    model, tokenizer = loaded.model, loaded.tokenizer
    ids = tokenizer(QUESTION, return_tensors="pt")["input_ids"].to(model.device)
    with torch.inference_mode():
        with_adapter = model(input_ids=ids).logits.float()
        with model.disable_adapter():
            without = model(input_ids=ids).logits.float()
        began = time.perf_counter()
        merged = model.merge_and_unload()
        merge_s = time.perf_counter() - began
        after = merged(input_ids=ids).logits.float()
    left = [name for name, _ in merged.named_parameters() if "lora_" in name]
    _drop(check.state, "loaded")
    return {"merge_s": round(merge_s, 3), "lora_parameters_left": len(left),
            "max_abs_logit_diff_merged": float((after - with_adapter).abs().max()),
            "max_abs_logit_diff_adapter_effect": float((with_adapter - without).abs().max()),
            "logit_std": float(with_adapter.std())}


def stage_export(check: Check, spec) -> dict:
    from helpers import export

    if check.state.get("checkpoint") is None:
        raise RuntimeError("needs a checkpoint from train_bf16/resume, which failed")
    target = check.state["workdir"] / "export"
    began = time.perf_counter()
    folder = export.export_merged(spec, check.state["checkpoint"], target)
    seconds = time.perf_counter() - began
    files = sorted(folder.iterdir())
    check.state["export"] = folder
    return {"export_s": round(seconds, 2), "files": [p.name for p in files],
            "size_gb": round(sum(p.stat().st_size for p in files if p.is_file()) / 1e9, 3)}


def random_weight_shards(spec, export: Path | None) -> str:
    """bitsandbytes quantises while loading, so random8b + QLoRA needs bf16 shards on disk.

    Reuse the merged export's shards (random weights of the same architecture) when there are some;
    otherwise draw the random model on the GPU (far faster than on the CPU) and save it once.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    target = spec.paths.model_dir
    if spec.profile.weights != "random" or any(target.glob("*.safetensors")):
        return "present"
    if export is not None and any(export.glob("*.safetensors")):
        for path in list(export.glob("*.safetensors")) + list(export.glob("*.safetensors.index.json")):
            (target / path.name).symlink_to(path.resolve())
        return "linked from the merged export"
    config = AutoConfig.from_pretrained(target)
    with torch.device("cuda" if _cuda() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(target, max_shard_size="5GB")
    del model
    return "drawn and saved"


def stage_qlora(check: Check, spec, steps: int) -> dict:
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        return {"status": "skipped: bitsandbytes missing"}
    began = time.perf_counter()
    how = random_weight_shards(spec, check.state.get("export"))
    prepare_s = time.perf_counter() - began
    reset_memory()  # the peak is training's, not the one-off writing of the shards
    import bitsandbytes as bnb

    trainer, info = train_steps(spec)
    linear4bit = sum(1 for m in trainer.model.modules() if isinstance(m, bnb.nn.Linear4bit))
    del trainer
    _drop(check.state)
    return {**info, "weights": how, "prepare_weights_s": round(prepare_s, 2), "linear4bit_modules": linear4bit}


def stage_recipes(check: Check, args, dataset: Path) -> dict:
    from . import gpu_qwen3_8b

    out = check.state["workdir"] / "recipes.json"
    budget = max(30.0, min(args.recipes_budget_s, check.guard_s - check.elapsed() - 5))
    argv = ["--profile", args.profile, "--device", "cuda" if _cuda() and not args.tiny else "cpu",
            "--data", str(dataset), "--warmup", str(args.recipe_warmup), "--steps", str(args.recipe_steps),
            "--budget-s", f"{budget:.0f}", "--out", str(out), "--recipes", *args.recipes]
    if args.tiny:
        argv.append("--quick")
    if args.recipe_rows:
        argv += ["--rows", str(args.recipe_rows)]
    code = gpu_qwen3_8b.main(argv)
    result = json.loads(out.read_text(encoding="utf-8"))
    failed = [name for name, r in result["recipes"].items() if r.get("status") != "ok"]
    return {"status": "ok" if code == 0 and not failed else f"error: {', '.join(failed) or f'exit {code}'}",
            "budget_s": round(budget), "recipes": result["recipes"], "targets": result.get("targets"),
            "flop_formula": result.get("flop_formula")}


# --------------------------------------------------------------------------- the whole check


def device_info() -> dict:
    import platform

    import torch

    if not _cuda():
        return {"name": f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)", "cuda": None}
    props = torch.cuda.get_device_properties(0)
    return {"name": torch.cuda.get_device_name(0), "memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda,
            "bf16": torch.cuda.is_bf16_supported()}


def estimates_gb() -> dict:
    """The course's memory estimates (GB) for the recipe this check measures (micro-batch 4, checkpointing),
    on its worst micro-batch (the 4 longest rows)."""
    from helpers import recipes

    out = {}
    for name, quantization in (("bf16_lora", None), ("qlora", "nf4")):
        parts = recipes.estimate_lora_memory_gb(tokens_per_micro_batch=recipes.worst_tokens(4),
                                                gradient_checkpointing=True, quantization=quantization)
        out[name] = round(parts["total"] + recipes.CUDA_OVERHEAD_GB, 1)
    return out


def repeated_sample(folder: Path, rows: int = 3729) -> Path:
    """The shipped 48-row sample repeated to about the real set's size (when the real set is not at hand)."""
    records = json.loads((REPO_ROOT / "data" / "huanhuan_sample.json").read_text(encoding="utf-8"))
    path = folder / "huanhuan_sample_repeated.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps((records * (rows // len(records) + 1))[:rows], ensure_ascii=False), encoding="utf-8")
    return path


def spec_for(args, workdir: Path, dataset: Path | None, run: str, extra: tuple[str, ...] = ()):
    """The check's spec, built here at the edge: the course config plus the check's overrides.

    A scratch workspace keeps the check's model folder, encoded data, checkpoints and export out of the
    learner's workspace; no settings file and no SwanLab.
    """
    from helpers.settings import DATASET_ENV, WORKSPACE_ENV
    from helpers.spec import build_spec

    env = {WORKSPACE_ENV: str(workdir / "workspace")}
    if dataset is not None:
        env[DATASET_ENV] = str(dataset)
    return build_spec(CONFIGS[args.profile], [*args.overrides, *extra], profile=args.profile, env=env,
                      settings_file=None, output_dir=workdir / run)


def run_check(args) -> dict:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    workdir = Path(tempfile.mkdtemp(prefix="gpu-check-", dir=args.workdir))
    dataset = args.dataset
    if dataset is None and not args.tiny:
        from bench.common import real_dataset_path

        try:
            dataset = real_dataset_path(os.environ)
        except FileNotFoundError:
            dataset = repeated_sample(workdir / "data")
    steps, more = args.steps, args.resume_steps
    args.overrides = [
        f"training.max_steps={steps}", f"training.save_steps={steps}", "training.logging_steps=1",
        "training.eval_strategy='no'", "data.eval_fraction=0", "training.report_to=none",
        "training.disable_tqdm=true", "swanlab.enabled=false",
    ]
    spec = spec_for(args, workdir, dataset, "run-bf16")
    resume_spec = spec_for(args, workdir, dataset, "run-bf16",
                           (f"training.max_steps={steps + more}", f"training.save_steps={steps + more}"))
    qlora_spec = spec_for(args, workdir, dataset, "run-qlora", ("quantization=nf4",))
    result = {
        "check": "bench.gpu_check",
        "profile": spec.profile.name,
        "device": device_info(),
        "versions": versions(),
        "settings": {"config": display_path(spec.config_file), "overrides": args.overrides, "steps": steps,
                     "resume_steps": more, "max_new_tokens": args.max_new_tokens,
                     "dataset": display_path(dataset or spec.paths.dataset), "guard_s": args.guard_s,
                     "micro_batch": spec.training.get("per_device_train_batch_size"),
                     "gradient_accumulation_steps": spec.training.get("gradient_accumulation_steps")},
        "estimates_gb": estimates_gb(),
    }
    check = Check(Path(args.out), result, args.guard_s, {} if args.tiny else GPU_STAGE_NEEDS_S)
    check.state["workdir"] = workdir
    try:
        check.stage("train_bf16", lambda: stage_train(check, spec, steps))
        check.stage("resume", lambda: stage_resume(check, resume_spec, steps, more))
        check.stage("generate", lambda: stage_generate(check, resume_spec, args.max_new_tokens))
        check.stage("merge", lambda: stage_merge(check))
        check.stage("export", lambda: stage_export(check, resume_spec), skip="--skip-export" if args.skip_export else None)
        check.stage("qlora", lambda: stage_qlora(check, qlora_spec, steps), skip="--skip-qlora" if args.skip_qlora else None)
        check.stage("recipes", lambda: stage_recipes(check, args, dataset or spec.paths.dataset),
                    skip="--skip-recipes" if args.skip_recipes else None)
    finally:
        stages = result["stages"]
        bf16, qlora = stages.get("train_bf16", {}), stages.get("qlora", {})
        if bf16.get("peak_allocated_gb") and qlora.get("status") == "ok" and qlora.get("peak_allocated_gb"):
            result["qlora_over_bf16_peak"] = round(qlora["peak_allocated_gb"] / bf16["peak_allocated_gb"], 3)
        result["finished"] = True
        result["wall_s"] = round(check.elapsed(), 1)
        write_result(scrubbed(result), args.out)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


# --------------------------------------------------------------------------- the table for RESULTS.md


def _gb(value) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) else "-"


def markdown_table(result: dict) -> str:
    """The check's results as markdown: stages, then bf16 vs QLoRA memory, then the recipes."""
    v, d = result["versions"], result["device"]
    lines = [f"Device: {d['name']}" + (f" ({d.get('memory_gib')} GiB, CUDA {d.get('cuda')})" if d.get("cuda") else "")
             + f"; torch {v.get('torch')}, transformers {v.get('transformers')}, peft {v.get('peft')}, "
             f"accelerate {v.get('accelerate')}, bitsandbytes {v.get('bitsandbytes') or '-'}; profile "
             f"`{result['profile']}`, {result['settings']['steps']} + {result['settings']['resume_steps']} steps, "
             f"wall time {result.get('wall_s', 0):.0f} s.",
             "",
             "| stage | status | wall s | GPU peak allocated GB | GPU peak reserved GiB | process RSS GiB | notes |",
             "|---|---|---|---|---|---|---|"]
    for name in STAGES:
        s = result["stages"].get(name)
        if s is None:
            lines.append(f"| {name} | not reached | | | | | |")
            continue
        status = s["status"] if s["status"] != "error" else f"error: {s.get('error', '')[:80]}"
        lines.append(f"| {name} | {status} | {s.get('wall_s', '-')} | {_gb(s.get('peak_allocated_gb'))} | "
                     f"{_gb(s.get('peak_reserved_gib'))} | {_gb(s.get('rss_gib'))} | {_notes(name, s)} |")
    est = result.get("estimates_gb", {})
    bf16, qlora = result["stages"].get("train_bf16", {}), result["stages"].get("qlora", {})
    lines += ["", "| recipe (micro-batch 4, checkpointing) | estimated peak GB | measured peak GB |", "|---|---|---|",
              f"| bf16 LoRA | {_gb(est.get('bf16_lora'))} | {_gb(bf16.get('peak_allocated_gb'))} |",
              f"| QLoRA 4-bit NF4 | {_gb(est.get('qlora'))} | "
              f"{_gb(qlora.get('peak_allocated_gb')) if qlora.get('status') == 'ok' else qlora.get('status', '-')} |"]
    recipes = result["stages"].get("recipes", {}).get("recipes") or {}
    if recipes:
        lines += ["", "| recipe | status | samples/s | real tokens/s | MFU | peak GiB | x original |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in recipes.items():
            if r.get("status") != "ok":
                lines.append(f"| `{name}` | {r.get('status', '?')[:60]} | | | | | |")
                continue
            mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
            speed = f"{r['speedup_samples_per_s']:.2f}" if r.get("speedup_samples_per_s") else "-"
            lines.append(f"| `{name}` | ok | {r['samples_per_s']:.2f} | {r['real_tokens_per_s']:,.0f} | {mfu} | "
                         f"{_gb(r.get('peak_allocated_gib'))} | {speed} |")
    return "\n".join(lines)


def _notes(name: str, s: dict) -> str:
    if s.get("status") != "ok":
        return ""
    if name in ("train_bf16", "qlora", "resume"):
        losses = s.get("losses") or []
        text = f"steps {s.get('global_step')}, {s.get('train_samples_per_second') or 0:.2f} samples/s"
        if losses:
            text += f", loss {losses[0][1]:.3f} -> {losses[-1][1]:.3f}"
        if name == "resume":
            text += f", from {s.get('resumed_from')}"
        if name == "qlora":
            text += f", {s.get('linear4bit_modules')} Linear4bit, weights {s.get('weights')}"
        return text
    if name == "generate":
        return f"{s.get('new_tokens')} tokens, first piece {s.get('first_piece_s')} s, {s.get('tokens_per_s')} tok/s"
    if name == "merge":
        return (f"max logit diff {s.get('max_abs_logit_diff_merged', 0):.3g} "
                f"(adapter effect {s.get('max_abs_logit_diff_adapter_effect', 0):.3g})")
    if name == "export":
        return f"{s.get('size_gb')} GB in {s.get('export_s')} s"
    return ""


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="JSON result (default bench/results/gpu_check.json; on the tiny profile "
                        "<workspace>/bench/gpu_check-tiny.json)")
    parser.add_argument("--dataset", type=Path, help="huanhuan.json (default: $HUANHUAN_JSON or ../shared/data; "
                        "else the shipped sample repeated)")
    parser.add_argument("--tiny", action="store_true", help="tiny profile on the CPU (automatic without CUDA)")
    parser.add_argument("--steps", type=int, help="optimizer steps of the training stages (default 10; tiny 3)")
    parser.add_argument("--resume-steps", type=int, help="steps after resuming (default 2; tiny 1)")
    parser.add_argument("--max-new-tokens", type=int, help="tokens to generate (default 32; tiny 8)")
    parser.add_argument("--recipe-rows", type=int, help="rows the recipes train on (default all; tiny 24)")
    parser.add_argument("--recipes", nargs="*", help="bench.gpu_qwen3_8b recipes for the last stage "
                        "(default original ours packed_16x1_ckpt)")
    parser.add_argument("--recipe-steps", type=int, help="measured steps per recipe (default 6; tiny 1)")
    parser.add_argument("--recipe-warmup", type=int, help="warm-up steps per recipe (default 2; tiny 1)")
    parser.add_argument("--recipes-budget-s", type=float, default=150, help="seconds for all recipes (default 150)")
    parser.add_argument("--guard-s", type=float, default=390, help="skip optional stages after this (default 390)")
    parser.add_argument("--skip-export", action="store_true", help="do not write the 16 GB merged export")
    parser.add_argument("--skip-qlora", action="store_true")
    parser.add_argument("--skip-recipes", action="store_true")
    parser.add_argument("--workdir", help="where the scratch folder goes (default: the course's workspace)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (checkpoints, export)")
    parser.add_argument("--table", metavar="JSON", help="print the markdown table of a result and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table(read_result(parser, args.table, ("versions", "device", "profile", "settings", "stages"))))
        return 0
    # launcher settings, before CUDA starts: less allocator fragmentation, no tokenizer fork warnings
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args.tiny = args.tiny or not _cuda()
    args.profile = "tiny" if args.tiny else "random8b"
    tiny = args.tiny
    args.steps = args.steps or (3 if tiny else 10)
    args.resume_steps = args.resume_steps or (1 if tiny else 2)
    args.max_new_tokens = args.max_new_tokens or (8 if tiny else 32)
    args.recipes = args.recipes or (["original", "ours"] if tiny else ["original", "ours", "packed_16x1_ckpt"])
    args.recipe_steps = args.recipe_steps or (1 if tiny else 6)
    args.recipe_warmup = args.recipe_warmup or (1 if tiny else 2)
    if tiny and args.recipe_rows is None:
        args.recipe_rows = 24
    args.dataset = args.dataset.resolve() if args.dataset else None
    if args.dataset is not None and not args.dataset.is_file():
        parser.error(f"--dataset {args.dataset}: no such file")
    workdir = Path(args.workdir) if args.workdir else course_workspace(os.environ)
    workdir.mkdir(parents=True, exist_ok=True)
    # a CPU rehearsal never overwrites the committed GPU result
    args.out = args.out or str(workdir / "bench" / "gpu_check-tiny.json" if tiny else DEFAULT_OUT)
    args.workdir = str(workdir)
    result = run_check(args)
    print(markdown_table(result))
    print(f"JSON: {display_path(args.out)}")
    return 0 if all(s["status"] == "ok" or s["status"].startswith("skipped") for s in result["stages"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
