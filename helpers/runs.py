"""What a training run leaves behind, and how to read it: the run summary, the loss plot, the sample log's
name, where to resume and how a fresh start moves the previous run aside.

Notebook 04 and ``python -m helpers.train`` write these; notebooks 05-07 and the evaluation read them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
import warnings
from pathlib import Path

from . import checkpoints, tracking
from .hardware import is_main_process
from .workspace import atomic_path, display_path, record_made, sha256_file, shareable_path

#: One JSON line per micro-batch: which dataset rows each process trained on.
SAMPLE_LOG = "sample_log.jsonl"
#: Written by rank 0 next to the checkpoints when a run ends: where everything went.
RUN_SUMMARY = "run_summary.json"


def start_fresh(spec, model=None) -> Path | None:
    """Move an earlier run aside so a new run starts clean (notebook 04 and ``--no-resume``); print where.
    ``model``: the notebook's model, refused before anything moves when this kernel has trained it already."""
    if model is not None:
        checkpoints.refuse_trained_lora(model)
    moved, removed = checkpoints.move_aside(spec.paths.run_dir)
    if moved is not None and is_main_process():
        print(f"上一次的训练结果已移到 {display_path(moved)}（只保留最近 {checkpoints.KEEP_PREVIOUS_RUNS} 次）")
        for old in removed:
            print(f"  删除了更早的 {display_path(old)}")
    return moved


def resume_point(spec, resume: bool | str | os.PathLike | None = True) -> Path | None:
    """The checkpoint to resume from: the given one (verified), or the latest that proves itself."""
    if resume in (None, False):
        return None
    if isinstance(resume, (str, os.PathLike)):
        problem = checkpoints.damaged_file(resume)
        if problem:
            raise checkpoints.CheckpointError(f"{display_path(resume)} 已损坏：{problem}。"
                                              "请改用更早的检查点。")
        checkpoints.refuse_other_recipe(spec, Path(resume))
        return Path(resume)
    found = checkpoints.latest_good_checkpoint(spec.paths.run_dir)
    if is_main_process():
        for note in found.notes():
            print(note)
    if found.checkpoint is not None:
        checkpoints.refuse_other_recipe(spec, found.checkpoint)
    return found.checkpoint


#: fonts with Chinese glyphs, in order of preference (the plots' labels are Chinese)
CJK_FONTS = ("Noto Sans CJK SC", "Noto Serif CJK SC", "Source Han Sans SC", "WenQuanYi Micro Hei",
             "WenQuanYi Zen Hei", "PingFang SC", "Hiragino Sans GB", "Heiti SC", "Microsoft YaHei", "SimHei")


def use_chinese_font() -> str | None:
    """Put the first installed font with Chinese glyphs first in matplotlib's list; return its name
    (None: none installed, e.g. ``apt install fonts-noto-cjk`` is missing, and Chinese labels show boxes).
    A font installed after matplotlib cached its font list is found too."""
    import contextlib

    from matplotlib import font_manager, rcParams

    def installed() -> set[str]:
        return {f.name for f in font_manager.fontManager.ttflist}

    names = installed()
    if not any(name in names for name in CJK_FONTS):
        for path in font_manager.findSystemFonts():
            with contextlib.suppress(Exception):
                font_manager.fontManager.addfont(path)
        names = installed()
    found = next((name for name in CJK_FONTS if name in names), None)
    if found is not None:
        rcParams["font.sans-serif"] = [found, *[n for n in rcParams["font.sans-serif"] if n != found]]
        rcParams["font.family"] = "sans-serif"
    else:
        _no_chinese_font()
    return found


@functools.cache
def _no_chinese_font() -> None:
    """Say once what to install, instead of matplotlib's English warning for every Chinese character drawn."""
    warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font", category=UserWarning)
    print("注意：这台机器没有中文字体，图里的中文会显示成方框。安装一个（Ubuntu / AutoDL："
          "sudo apt-get install -y fonts-noto-cjk），再重启内核或重新运行命令。", file=sys.stderr)


def save_plot(fig, path: Path) -> Path:
    """A figure as a PNG, written whole or not at all, recorded as the course's (``make reset`` removes it)."""
    with atomic_path(path) as temporary:
        fig.savefig(temporary, dpi=110, format="png")
    return record_made(path)


def plot_history(log_history: list[dict], path: Path | None = None, title: str = ""):
    """Train loss, eval loss (when there is a held-out set) and learning rate per step; saved as PNG."""
    import matplotlib

    if path is not None and "ipykernel" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    use_chinese_font()
    steps = [e["step"] for e in log_history if "loss" in e]
    losses = [e["loss"] for e in log_history if "loss" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    lrs = [e["learning_rate"] for e in log_history if "loss" in e and "learning_rate" in e]
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax_loss.plot(steps, losses, marker="o", markersize=3, label="训练损失 train/loss")
    if evals:
        ax_loss.plot([s for s, _ in evals], [v for _, v in evals], marker="s", color="tab:red",
                     label="留出集损失 eval/loss")
        ax_loss.legend()
    ax_loss.set(xlabel="步数", ylabel="损失", title=title or "损失")
    ax_loss.grid(alpha=0.3)
    ax_lr.plot(steps[: len(lrs)], lrs, color="tab:orange")
    ax_lr.set(xlabel="步数", ylabel="学习率", title="学习率")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    if path is not None:
        save_plot(fig, path)
    return fig


def loss_summary(log_history: list[dict]) -> tuple[float, float]:
    """(first logged loss, last logged loss)."""
    losses = [e["loss"] for e in log_history if "loss" in e]
    return losses[0], losses[-1]


def best_eval(log_history: list[dict]) -> tuple[int, float] | None:
    """(step, eval loss) of the lowest held-out loss, or None without evaluation."""
    evals = [(e["eval_loss"], e["step"]) for e in log_history if "eval_loss" in e]
    if not evals:
        return None
    loss, step = min(evals)
    return step, loss


def epoch_boundaries(log_history: list[dict]) -> list[int]:
    """The logged steps at which a new epoch began (where a staircase loss curve drops)."""
    steps, last = [], 0
    for entry in log_history:
        if "loss" in entry and "epoch" in entry:
            epoch = int(entry["epoch"] + 1e-9)
            if epoch > last:
                steps.append(entry["step"])
                last = epoch
    return steps


def effective_batch(per_device: int, accumulation: int, processes: int) -> int:
    """Samples per optimizer step: per device x accumulation x processes."""
    return per_device * accumulation * processes


def run_summary(spec, trainer, metrics: dict, swanlab_folder: Path | None) -> dict:
    best = best_eval(trainer.state.log_history)
    best_folder = spec.paths.run_dir / f"checkpoint-{best[0]}" if best else None
    return {
        "profile": spec.profile.name,
        "global_step": trainer.state.global_step,
        "train_runtime": metrics.get("train_runtime"),
        "train_samples_per_second": metrics.get("train_samples_per_second"),
        "train_loss": metrics.get("train_loss"),
        "effective_batch_size": effective_batch(trainer.args.per_device_train_batch_size,
                                                trainer.args.gradient_accumulation_steps, trainer.args.world_size),
        "world_size": trainer.args.world_size,
        "checkpoint": checkpoints.find_latest_checkpoint(spec.paths.run_dir),
        "best_eval": {"step": best[0], "eval_loss": best[1],
                      "checkpoint": best_folder.name if best_folder.is_dir() else None} if best else None,
        "output_dir": spec.paths.run_dir,
        "swanlab_run": swanlab_folder,
        "swanlab_mode": tracking.recorded_mode(swanlab_folder, spec),
        "log_history": trainer.state.log_history,
    }


def plot_path(spec) -> Path:
    """Where a run's loss plot goes: ``<workspace>/plots/train-<profile>.png`` for the profile's own run folder; a run
    in a folder of its own (``--output-dir``) gets a name of its own, so it never overwrites another run's plot."""
    run_dir = spec.paths.run_dir.resolve()
    if run_dir == spec.own_run_dir.resolve():
        return spec.paths.plots / f"train-{spec.profile.name}.png"
    return spec.paths.plots / f"train-{spec.profile.name}-{run_dir.name}-{_place_tag(run_dir)}.png"


def _place_tag(path: Path) -> str:
    """Eight hex digits naming where ``path`` lives: two folders of the same name get different file names."""
    return hashlib.sha256(str(path).encode("utf-8")).hexdigest()[:8]


def report_path(run_dir: Path, adapter: Path, name: str = "eval_report.json") -> Path:
    """Where the evaluation of ``adapter`` goes: ``<run>/eval_report.json`` for this run's own adapter;
    an adapter from elsewhere gets a name of its own (its folder name and a hash of where it lives)."""
    adapter = Path(adapter).resolve()
    if Path(run_dir).resolve() in adapter.parents or adapter == Path(run_dir).resolve():
        return Path(run_dir) / name
    return Path(run_dir) / f"{Path(name).stem}-{adapter.parent.name}-{adapter.name}-{_place_tag(adapter)}.json"


def save_run_summary(spec, summary: dict) -> Path:
    """``run_summary.json`` in the run folder; its paths are relative to the run folder or the workspace."""
    saved = {k: v for k, v in summary.items() if k not in ("trainer", "log_history")}
    for key in ("checkpoint", "output_dir", "swanlab_run", "plot"):
        saved[key] = shareable_path(summary.get(key), spec.paths.run_dir, spec.paths.workspace)
    saved["spec"] = spec.to_dict()
    # which data file it trained on, wherever it lives (the spec keeps only a shareable name): evaluate compares it
    saved["dataset_sha256"] = sha256_file(spec.paths.dataset) if spec.paths.dataset.is_file() else None
    path = spec.paths.run_dir / RUN_SUMMARY
    with atomic_path(path) as partial:
        partial.write_text(json.dumps(saved, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


#: the data settings that decide which rows are held out
SPLIT_KEYS = ("max_rows", "eval_fraction", "split_seed")


def _trained_with(checkpoint: Path) -> tuple[dict, dict]:
    """(the run summary, its data settings) of the run that made the adapter; ({}, {}) without a readable one."""
    try:
        saved = json.loads((Path(checkpoint).parent / RUN_SUMMARY).read_text(encoding="utf-8"))
        return saved, dict(saved["spec"]["data"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}, {}


def split_as_trained(spec, checkpoint: Path) -> tuple:
    """(spec, notes): the spec with the split settings of the run that made the adapter, when that run held rows out
    of the same data file, so that the held-out set is exactly what it never trained on (another run's experiment
    with other settings may have saved the split last)."""
    saved, data = _trained_with(checkpoint)
    same_file = (saved.get("dataset_sha256") is not None and spec.paths.dataset.is_file()
                 and sha256_file(spec.paths.dataset) == saved["dataset_sha256"])
    changes = {key: data[key] for key in SPLIT_KEYS if key in data and data[key] != getattr(spec.data, key)}
    if not (same_file and changes and (data.get("eval_fraction") or 0) > 0):
        return spec, []
    shown = "，".join(f"{key}={value!r}" for key, value in changes.items())
    return (spec.replace(data=dataclasses.replace(spec.data, **changes)),
            [f"留出集按训练这个适配器的那次运行的设置切分（{shown}，见它的 {RUN_SUMMARY}）：都是它没训练过的数据"])


def data_notes(spec, checkpoint: Path) -> list[str]:
    """A warning when the run that made the adapter used another data file or other split settings than this
    spec: then some held-out rows may have been trained on."""
    saved, data = _trained_with(checkpoint)
    if not saved:
        return []
    wanted = spec.to_dict()["data"]
    differing = [f"{k}={data[k]!r}" for k in SPLIT_KEYS if k in data and data[k] != wanted[k]]
    if saved.get("dataset_sha256"):     # the file itself, wherever it was given from
        if spec.paths.dataset.is_file() and sha256_file(spec.paths.dataset) != saved["dataset_sha256"]:
            differing.insert(0, f"数据文件 {display_path(spec.paths.dataset)} 和它训练时的不是同一份（sha256 不同）")
    elif "source" in data and data["source"] != wanted["source"]:   # a summary from before the hash was kept
        differing.insert(0, f"source={data['source']!r}")
    if not differing:
        return []
    own = data.get("source") not in (None, "course", wanted["source"])   # it trained on a file of the learner's
    return [f"训练这个适配器的那次运行用了不同的数据设置（{'，'.join(differing)}）：留出集里可能有些数据已经被训练过"
            + (f"。要在它自己的留出集上评估：加上 --set data.source=<它训练时的数据文件，名叫 {data['source']}>"
               if own else "")]


def load_run_summary(spec) -> dict:
    """A finished run's summary read back, paths resolved, with the log history of its last checkpoint."""
    summary = json.loads((spec.paths.run_dir / RUN_SUMMARY).read_text(encoding="utf-8"))
    summary["checkpoint"] = spec.paths.run_dir / summary["checkpoint"] if summary.get("checkpoint") else None
    summary["output_dir"] = spec.paths.run_dir
    if summary.get("swanlab_run"):
        summary["swanlab_run"] = spec.paths.workspace / summary["swanlab_run"]
    if summary.get("plot"):
        summary["plot"] = spec.paths.workspace / summary["plot"]
    summary["log_history"] = checkpoint_history(summary["checkpoint"])
    return summary


def checkpoint_history(checkpoint: Path) -> list[dict]:
    """The log history the Trainer saved in a checkpoint (``trainer_state.json``): every logged step up to it;
    [] for an adapter handed over without it (only the two adapter files)."""
    path = Path(checkpoint) / "trainer_state.json"
    return json.loads(path.read_text(encoding="utf-8"))["log_history"] if path.is_file() else []


def describe_summary(summary: dict) -> str:
    lines = [
        f"profile / 档位                 {summary['profile']}",
        f"global step / 全局步数         {summary['global_step']}",
        f"effective batch / 有效批次     {summary['effective_batch_size']}（每卡批次 × 梯度累积 × {summary['world_size']} 个进程）",
        f"train loss / 训练损失          {summary['train_loss']:.4f}"
        + (f"（第 {summary['resumed_from_step'] + 1}–{summary['global_step']} 步的平均：这次续训的部分）"
           if summary.get("resumed_from_step") else "") if summary.get("train_loss") is not None else "",
        f"adapter / 适配器               {display_path(summary['checkpoint']) if summary['checkpoint'] else '-'}",
        f"checkpoints / 检查点目录       {display_path(summary['output_dir'])}",
    ]
    if summary.get("best_eval"):
        best = summary["best_eval"]
        lines.append(f"best eval loss / 最低留出损失  {best['eval_loss']:.4f}，第 {best['step']} 步 "
                     f"（{best['checkpoint'] or '那一步没有保存检查点'}）")
    if summary.get("plot"):
        lines.append(f"loss plot / 损失曲线           {display_path(summary['plot'])}")
    if summary.get("swanlab_run"):
        lines.append(f"SwanLab run / SwanLab 记录     {display_path(summary['swanlab_run'])}（{summary.get('swanlab_mode')}）")
        if summary.get("swanlab_mode") != "online":
            lines.append(f"upload it later / 之后上传     {tracking.sync_command(summary['swanlab_run'])}")
    return "\n".join(line for line in lines if line)


def record_run(spec, trainer, metrics: dict, swanlab_folder, resumed_from: Path | None = None) -> dict:
    """After ``trainer.train()`` (notebook 04 and ``python -m helpers.train``): the run summary, saved with its loss
    plot. A run resumed at its last step trained nothing: its saved summary stays (see :func:`already_finished`)."""
    if resumed_from is not None and trainer.state.global_step == checkpoints.checkpoint_step(resumed_from):
        return already_finished(spec, trainer)
    summary = run_summary(spec, trainer, metrics, swanlab_folder)
    # the Trainer's train_loss averages the steps of this call only: a resumed run says from which step
    summary["resumed_from_step"] = checkpoints.checkpoint_step(resumed_from) if resumed_from is not None else 0
    return _saved(spec, trainer, summary)


def _saved(spec, trainer, summary: dict) -> dict:
    """``summary`` with its loss plot, both written by process 0."""
    if trainer.args.process_index == 0:
        summary["plot"] = plot_path(spec)
        plot_history(trainer.state.log_history, summary["plot"], title=f"{spec.profile.name}：损失")
        save_run_summary(spec, summary)
    return summary


def already_finished(spec, trainer) -> dict:
    """A run resumed at its last step trained nothing: its saved summary stays (no "train loss 0"). One killed
    after its last checkpoint, before its summary was written, gets it now (the plot from the checkpoint's log)."""
    summary = _summary_at(spec, trainer)
    _say_finished(spec, trainer.state.global_step)
    summary["trainer"] = trainer
    return summary


def _summary_at(spec, trainer) -> dict:
    """The saved summary of the run's last step; else (killed after its last checkpoint, before the summary was
    written) one made now from the Trainer's state, with its plot: no train loss, and no SwanLab run (the one that
    trained is not known; one opened now recorded nothing)."""
    saved = spec.paths.run_dir / RUN_SUMMARY
    if saved.is_file() and json.loads(saved.read_text(encoding="utf-8")).get("global_step") == trainer.state.global_step:
        return load_run_summary(spec)
    return _saved(spec, trainer, {**run_summary(spec, trainer, {}, None), "train_loss": None})


def finished_summary(spec, checkpoint: Path | None, args) -> dict | None:
    """The run's summary when ``checkpoint`` is the end these ``TrainingArguments`` train to (``max_steps``, or else
    ``num_train_epochs``): nothing is left to train, so the command loads no model and opens no SwanLab run.
    None otherwise (the Trainer decides)."""
    from types import SimpleNamespace

    state = trained_to_end(checkpoint, args)
    if state is None:
        return None
    summary = _summary_at(spec, SimpleNamespace(state=state, args=args))   # the Trainer's state and arguments
    _say_finished(spec, state.global_step)
    return summary


def trained_to_end(checkpoint: Path | None, args):
    """The checkpoint's ``TrainerState`` when it is the end these ``TrainingArguments`` train to (resuming it trains
    nothing, and the Trainer reports a training loss of 0.0), else None."""
    from transformers import TrainerState

    state_file = Path(checkpoint) / "trainer_state.json" if checkpoint is not None else None
    if state_file is None or not state_file.is_file():
        return None
    state = TrainerState.load_from_json(str(state_file))
    return state if reached_end(state, args.max_steps, args.num_train_epochs) else None


def reached_end(state, max_steps: int, num_train_epochs: float) -> bool:
    """Whether a ``TrainerState`` has trained to the end these settings plan: ``max_steps``, or else the epochs."""
    return state.global_step >= max_steps if max_steps > 0 else (state.epoch or 0) >= num_train_epochs


def _say_finished(spec, step: int) -> None:
    if is_main_process():
        print(f"{display_path(spec.paths.run_dir)} 已经训练完成（第 {step} 步），本次没有再训练；"
              "要从头训练：命令行加 --no-resume，第 04 课设 START_FRESH = True")
