"""Notebook 07: the same training on several processes with ``accelerate launch``: the shipped
``configs/accelerate/*.yaml``, the ESTIMATED GPU memory per GPU for each, and which dataset rows each
rank trained on (read back from a run's ``sample_log.jsonl``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from .checkpoints import lock_run
from .download import build_tiny_model
from .errors import ERROR_PREFIX, ArgumentParser, CourseError, positive_int, run_cli
from .models import QWEN3_SHAPES, qwen3_counts
from .profiles import PROFILES
from .recipes import estimate_lora_memory_gb
from .runs import SAMPLE_LOG
from .spec import build_spec, resolve_paths
from .workspace import REPO_ROOT, away_from_repo, course_folder, display_path, named_path

ACCELERATE_CONFIG_DIR = REPO_ROOT / "configs" / "accelerate"
#: the most GPUs the table and commands take (``--gpus``)
MAX_GPUS = 1024


class DemoError(CourseError, RuntimeError):
    """The CPU demo's ranks stopped on a course error; the message is their one line."""


@dataclass(frozen=True)
class Strategy:
    name: str
    config: str
    #: what gets divided by the number of GPUs: "" (nothing), "optimizer" (LoRA grads + Adam) or "all"
    shards: str
    summary: str


STRATEGIES: dict[str, Strategy] = {
    "single-gpu": Strategy("单卡", "single-gpu.yaml", "", "一个进程、一块 GPU"),
    "ddp": Strategy("DDP", "ddp.yaml", "", "每块 GPU 一份完整模型，各训一份数据"),
    "zero2": Strategy("DeepSpeed ZeRO-2", "zero2.yaml", "optimizer", "LoRA 的梯度和 Adam 状态分片"),
    "fsdp": Strategy("FSDP2", "fsdp.yaml", "all", "权重、梯度和 Adam 状态全部分片"),
    "zero3": Strategy("DeepSpeed ZeRO-3", "zero3.yaml", "all", "权重、梯度和 Adam 状态全部分片"),
}


def per_gpu_memory_gb(strategy: str, gpus: int, model: str = "Qwen3-8B") -> dict[str, float]:
    """ESTIMATED memory per GPU (GB) for LoRA training with one strategy on ``gpus`` GPUs.

    Starts from :func:`helpers.recipes.estimate_lora_memory_gb` (one GPU) and divides what the
    strategy shards: DDP nothing; ZeRO-2 the LoRA gradients and Adam states (12 of the 16 bytes
    per trainable parameter); FSDP / ZeRO-3 the weights and all LoRA states, plus one decoder
    layer gathered in full at a time (two with prefetching). Activations and logits belong to
    each GPU's own micro-batch and are never divided.
    """
    kind = STRATEGIES[strategy].shards
    gpus = 1 if strategy == "single-gpu" else gpus
    counts = qwen3_counts(model)
    one = estimate_lora_memory_gb(model)
    weights, lora = one["weights (bf16)"], one["LoRA weights + grads + Adam (fp32)"]
    out = dict(one)
    if kind == "optimizer":
        out["LoRA weights + grads + Adam (fp32)"] = lora * 4 / 16 + lora * 12 / 16 / gpus
    elif kind == "all":
        gathered = 2 * (weights - counts["embedding_params"] * 2 / 1e9) / counts["layers"]
        out["weights (bf16)"] = weights / gpus + (gathered if gpus > 1 else 0.0)
        out["LoRA weights + grads + Adam (fp32)"] = lora / gpus
    out["total"] = sum(v for k, v in out.items() if k != "total")
    return out


def memory_table(model: str = "Qwen3-8B", gpus: int | None = None) -> str:
    """A text table: estimated GB per GPU for each strategy on 2, 4 and 8 GPUs, and on ``gpus`` (the count asked for)."""
    from .padding import pad_text

    gpu_counts = tuple(sorted({2, 4, 8} | ({gpus} if gpus and gpus > 1 else set())))
    head = pad_text("做法", 16) + "".join(pad_text(f"{n} 块 GPU", 12, right=True) for n in gpu_counts)
    lines = [f"{model} LoRA：每块 GPU 的显存，估计值（ESTIMATED，GB，未实测）", head]
    for key, strategy in STRATEGIES.items():
        if key == "single-gpu":
            total = per_gpu_memory_gb(key, 1, model)["total"]
            lines.append(f"{pad_text(strategy.name, 16)}{total:>12.1f}（1 块 GPU）")
            continue
        cells = "".join(f"{per_gpu_memory_gb(key, n, model)['total']:>12.1f}" for n in gpu_counts)
        lines.append(f"{pad_text(strategy.name, 16)}{cells}")
    return "\n".join(lines)


#: the profile that trains each downloaded model (full: Qwen3-8B, small: Qwen3-0.6B), and its shipped training
#: config; the other sizes' tables are estimates only
TRAIN_PROFILES = {p.model: p.name for p in PROFILES.values() if p.source == "modelscope"}
TRAIN_CONFIGS = {model: f"configs/train/{PROFILES[name].train_config}.yaml" for model, name in TRAIN_PROFILES.items()}


def launch_command(strategy: str, gpus: int | None = None, model: str = "Qwen3-8B") -> str:
    """The exact shell command for one strategy (relative paths: run it in the repository root)."""
    config = f"configs/accelerate/{STRATEGIES[strategy].config}"
    procs = f" --num_processes {gpus}" if gpus and strategy != "single-gpu" else ""
    return f"accelerate launch --config_file {config}{procs} -m helpers.train --config {TRAIN_CONFIGS[model]}"


def free_port() -> int:
    """A TCP port nobody listens on now (for ``--main_process_port``)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_launch(output_dir: str | os.PathLike, *overrides: str, resume: bool = False,
               env: dict | None = None) -> subprocess.Popen:
    """Start ``accelerate launch`` with ``configs/accelerate/cpu-2proc.yaml`` on the tiny config (CPU, gloo)."""
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [
        str(accelerate) if accelerate.is_file() else "accelerate",
        "launch", "--config_file", str(ACCELERATE_CONFIG_DIR / "cpu-2proc.yaml"),
        "--main_process_port", str(free_port()),
        "-m", "helpers.train", "--config", str(REPO_ROOT / "configs" / "train" / "tiny.yaml"),
        "--output-dir", str(output_dir),
    ]
    if not resume:
        cmd.append("--no-resume")
    for item in overrides:
        cmd += ["--set", item]
    # CUDA hidden: a CPU proof even on a GPU box (two ranks cannot share one GPU)
    full_env = {"QWEN3_TUTORIAL_PROFILE": "tiny", "OMP_NUM_THREADS": "1", **os.environ, **(env or {}),
                "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def demo_workspace(spec) -> Path:
    """``<workspace>/scale-out-demo``: a workspace of the CPU demo's own, its ``models`` linking the workspace's
    tiny model directory (built if missing), whatever the spec's profile: on a GPU machine that is ``full``,
    whose Qwen3-8B folder the demo never touches."""
    model = build_tiny_model(resolve_paths(PROFILES["tiny"], {"workspace": (str(spec.paths.workspace), "")}).model_dir)
    root = spec.paths.workspace / "scale-out-demo"
    link = root / "models" / model.name
    if not link.exists():
        course_folder(root)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(model, target_is_directory=True)
    return root


def run_cpu_demo(spec, *overrides: str) -> tuple[Path, str]:
    """Train the tiny profile with 2 CPU processes in :func:`demo_workspace` (its plot, checkpoints
    and logs stay apart from notebook 04's); return (checkpoint folder, the launch's console output).
    Raises with the output's tail on failure.
    """
    root = demo_workspace(spec)
    out = root / "checkpoints" / "tiny-2proc"
    with lock_run(out, elsewhere=""):   # a demo still training there (another cell, a terminal) keeps its run
        if out.exists():   # a demo starts over (a resume is notebook 07's own lesson): say where the old one went
            shutil.rmtree(out)
            print(f"删除了上一次的演示运行 {display_path(out)}：演示每次从头训练")
    proc = cpu_launch(out, *overrides, env={"QWEN3_TUTORIAL_WORKSPACE": str(root), "QWEN3_TUTORIAL_PROFILE": "tiny"})
    try:
        log, _ = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    if proc.returncode != 0:
        known = next((line for line in log.splitlines() if line.startswith(ERROR_PREFIX)), None)
        if known is not None:   # a course error in the ranks (a missing dataset, a held lock): their one line
            raise DemoError(f"多进程演示没有完成：{known.removeprefix(ERROR_PREFIX)}")
        raise RuntimeError(f"accelerate launch 失败（退出码 {proc.returncode}）：\n{log[-3000:]}")
    return out, log


def read_sample_log(output_dir: str | os.PathLike) -> list[dict]:
    """Every line of a run's ``sample_log.jsonl``."""
    path = named_path(output_dir) / SAMPLE_LOG
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def shards_per_step(entries: list[dict], pids: set[int] | None = None) -> list[dict[int, list[int]]]:
    """``[{rank: rows}, ...]`` per micro-batch index (``call``), one process per rank.

    ``pids`` picks the processes of one launch (a resumed run appends to the same log).
    """
    by_call: dict[int, dict[int, list[int]]] = defaultdict(dict)
    for entry in entries:
        if pids is not None and entry["pid"] not in pids:
            continue
        if entry["rank"] in by_call[entry["call"]]:
            raise ValueError(f"rank {entry['rank']} 把第 {entry['call']} 次调用记录了两次：请只传入同一次启动的 pids")
        by_call[entry["call"]][entry["rank"]] = entry["rows"]
    return [by_call[call] for call in sorted(by_call)]


def format_shards(steps: list[dict[int, list[int]]]) -> str:
    """One line per micro-batch (of one epoch): each rank's rows, whether the ranks overlap in that
    micro-batch, and rows that an earlier micro-batch already trained."""
    lines, seen = [], set()
    for call, ranks in enumerate(steps):
        cells = "   ".join(f"rank {r}: {sorted(rows)!s:<10}" for r, rows in sorted(ranks.items()))
        sets = [set(rows) for rows in ranks.values()]
        overlap = set.intersection(*sets) if len(sets) > 1 else set()
        note = f"重叠 {sorted(overlap)}" if overlap else "不相交"
        repeated = set().union(*sets) & seen
        if repeated:
            note += f"，{sorted(repeated)} 在前面的微批次里训过"
        seen |= set().union(*sets)
        lines.append(f"微批次 {call}：  {cells}  {note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.scale_out``: notebook 07's tables and commands, and its live CPU run."""
    parser = ArgumentParser(
        prog="python -m helpers.scale_out",
        description="每种多卡做法的显存估计值（ESTIMATED）和它的 accelerate launch 命令；"
                    "--demo 用 2 个 CPU 进程训练 tiny 模型，并显示每个 rank 训练了哪些数据（notebook 07）。")
    parser.add_argument("--model", choices=list(QWEN3_SHAPES), help="表格用哪个 Qwen3 尺寸（默认：当前档位的模型，"
                        "tiny 档位是 Qwen3-8B）")
    parser.add_argument("--gpus", type=positive_int, default=4, help=f"启动命令里的 GPU 数（默认 4，最多 {MAX_GPUS}）")
    parser.add_argument("--demo", action="store_true", help="再用 2 个 CPU 进程训练 tiny 模型"
                        "（约一分钟；在 <workspace>/scale-out-demo 里）")
    parser.add_argument("--debug", action="store_true", help="显示完整的 traceback")
    args = parser.parse_args(argv)
    if args.gpus > MAX_GPUS:
        parser.error(f"--gpus {args.gpus} 太多了：最多 {MAX_GPUS}（例如 128 台机器 × 8 块 GPU）")

    def work() -> int:
        spec = build_spec()
        model = args.model or spec.profile.model
        print(memory_table(model, args.gpus))
        trained = model if model in TRAIN_CONFIGS else "Qwen3-8B"
        if trained != model:
            print(f"\n课程没有 {model} 的训练配置（只有 {'、'.join(TRAIN_CONFIGS)} 的）：上面的表格只是估算，"
                  f"下面的命令训练的是 {trained}。")
        if "profile" in spec.given and spec.profile.recipe != TRAIN_PROFILES[trained]:
            print(f"\n注意：你的设置选的是 {spec.profile.name} 档位（{spec.origin['profile']}），下面的命令用的是 "
                  f"{TRAIN_PROFILES[trained]} 档位的配置，两者矛盾时训练会拒绝开始。在 GPU 机器上先运行 python -m "
                  f"helpers.environment setup --profile {TRAIN_PROFILES[trained]}，并取消（或改掉）QWEN3_TUTORIAL_PROFILE。")
        if args.gpus == 1:   # the multi-GPU ways need two GPUs at least: a launch with 1 process is the single GPU run
            print("\n只有 1 块 GPU：DDP、ZeRO 和 FSDP 都要 2 块以上，用单卡的命令（有几块就用 --gpus 几）。")
        cd = away_from_repo()   # the commands name configs/ relative to the repository
        if cd is not None:
            print(f"\n下面的命令要在仓库根目录运行：先 {cd}")
        for key, strategy in STRATEGIES.items():
            if args.gpus == 1 and key != "single-gpu":
                continue
            print(f"\n# {strategy.name}: {strategy.summary}"
                  + ("（先 pip install deepspeed：课程的依赖里没有它）" if strategy.config.startswith("zero") else ""))
            print(launch_command(key, gpus=None if key == "single-gpu" else args.gpus, model=trained))
        if args.demo:
            out, _ = run_cpu_demo(spec, "data.max_rows=10", "training.per_device_train_batch_size=2",
                                  "training.num_train_epochs=1", "training.save_steps=3", "swanlab=null")
            print(f"\n{format_shards(shards_per_step(read_sample_log(out)))}\n检查点：{display_path(out)}")
        return 0

    return run_cli(work, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
