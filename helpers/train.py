"""Notebook 04: LoRA training with the Trainer, tracked by SwanLab, crash-safe.

The notebook walks through the steps one cell at a time; ``python -m helpers.train
--config configs/train/<name>.yaml`` runs the very same steps from a shell (and under
``accelerate launch`` for several GPUs).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import re
import sys
import time
from pathlib import Path

from .profiles import PROFILE_ENV, Profile, resolve_profile
from .workspace import REPO_ROOT, display_path, require_artifact, workspace_path

#: Written into a checkpoint folder once the Trainer has finished saving it.
COMPLETE_MARKER = "checkpoint_complete"
#: One JSON line per micro-batch: which dataset rows each process trained on.
SAMPLE_LOG = "sample_log.jsonl"
#: Written by rank 0 next to the checkpoints when a run ends: where everything went.
RUN_SUMMARY = "run_summary.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
CONFIG_DIR = REPO_ROOT / "configs" / "train"


# --------------------------------------------------------------------------- config

def config_path(profile: Profile | str | None = None) -> Path:
    profile = _profile(profile)
    return CONFIG_DIR / f"{profile.train_config}.yaml"


def load_config(path_or_profile: str | os.PathLike | Profile | None = None, overrides: list[str] | None = None) -> dict:
    """Read a training config (YAML); by default the active profile's.

    ``overrides`` are ``dotted.key=value`` strings (values parsed as YAML), e.g.
    ``training.max_steps=20``.
    """
    import yaml

    if isinstance(path_or_profile, (str, os.PathLike)) and str(path_or_profile).endswith((".yaml", ".yml")):
        path = Path(path_or_profile)
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        requested = os.environ.get(PROFILE_ENV, "").strip().lower()
        if requested and requested != "auto":
            config["profile"] = requested
    else:
        profile = _profile(path_or_profile)
        path = config_path(profile)
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        config["profile"] = profile.name
    config["config_file"] = display_path(path)
    for item in overrides or []:
        key, _, value = item.partition("=")
        if not _:
            raise ValueError(f"override {item!r} must look like section.key=value")
        target = config
        *parents, leaf = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = yaml.safe_load(value)
    return config


def _profile(profile) -> Profile:
    return profile if isinstance(profile, Profile) else resolve_profile(profile)


# --------------------------------------------------------------------------- checkpoints

def run_dir(profile: Profile | str | None = None) -> Path:
    """Where a profile's training run writes its checkpoints: ``workspace/checkpoints/<profile>``."""
    return workspace_path("checkpoints", _profile(profile).name)


def output_dir(config: dict) -> Path:
    return Path(config["output_dir"]) if config.get("output_dir") else run_dir(config["profile"])


def is_complete_checkpoint(path: Path) -> bool:
    """A checkpoint counts only once the marker written after saving is there."""
    path = Path(path)
    return (path / COMPLETE_MARKER).is_file() and (path / "adapter_model.safetensors").is_file()


def find_latest_checkpoint(folder: Path) -> Path | None:
    """The highest-step COMPLETE ``checkpoint-N`` in ``folder`` (half-written ones are skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = []
    for child in folder.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if match and child.is_dir() and is_complete_checkpoint(child):
            found.append((int(match.group(1)), child))
    return max(found)[1] if found else None


def checkpoint_step(path: Path) -> int:
    return int(_CHECKPOINT_RE.match(Path(path).name).group(1))


# --------------------------------------------------------------------------- data

def training_samples(config: dict, tokenizer, from_notebook_03: bool = False) -> list[dict]:
    """The encoded samples to train on.

    ``from_notebook_03=True`` reads what notebook 03 saved (and says so if it is
    missing); otherwise the records are loaded, validated and encoded here.
    """
    from . import data

    profile = _profile(config["profile"])
    data_cfg = config.get("data", {})
    if from_notebook_03:
        path = require_artifact(data.encoded_path(profile), made_by="03-data.ipynb", what="The encoded dataset")
        samples = data.load_encoded(path)
    else:
        source = data_cfg.get("source", "course")
        path = data.course_dataset_path(profile) if source == "course" else Path(source)
        records = data.load_records(path).records
        system_prompt = data_cfg.get("system_prompt", "default")
        samples, report = data.encode_records(
            records,
            tokenizer,
            system_prompt=data.DEFAULT_SYSTEM_PROMPT if system_prompt == "default" else system_prompt,
            max_length=data_cfg.get("max_length", data.DEFAULT_MAX_LENGTH),
        )
        if is_main_process():
            print(report.summary())
    max_rows = data_cfg.get("max_rows")
    if max_rows:
        samples = samples[:max_rows]
    return samples


def to_train_dataset(samples: list[dict]):
    """``data.to_dataset`` plus each sample's row number, which the sample log records."""
    from . import data

    return data.to_dataset(samples).add_column("row", [s.get("row", i) for i, s in enumerate(samples)])


class SampleLogCollator:
    """Wraps a collator: logs which dataset rows each micro-batch holds, then collates.

    The log (``sample_log.jsonl`` next to the checkpoints) proves the data order
    survives a resume and that distributed ranks train on disjoint samples.
    """

    def __init__(self, inner, log_path: Path | None = None, rank: int = 0):
        self.inner = inner
        self.log_path = Path(log_path) if log_path else None
        self.rank = rank
        self.calls = 0

    def __call__(self, features):
        rows = [int(f["row"]) for f in features]
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"pid": os.getpid(), "rank": self.rank, "call": self.calls, "rows": rows}) + "\n")
        self.calls += 1
        trimmed = [{k: v for k, v in f.items() if k in ("input_ids", "labels")} for f in features]
        return self.inner(trimmed)


def make_collator(batching: str, tokenizer):
    """``packed``: padding-free (DataCollatorWithFlattening); else padded to the longest."""
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    if batching == "packed":
        return DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
    if batching in ("padded", "grouped"):
        return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    raise ValueError(f"batching must be packed, padded or grouped, not {batching!r}")


# --------------------------------------------------------------------------- model

def lora_config(config: dict):
    from peft import LoraConfig, TaskType

    return LoraConfig(task_type=TaskType.CAUSAL_LM, inference_mode=False, **config["lora"])


def build_lora_model(config: dict):
    """The profile's base model wrapped with the config's LoRA adapters.

    The seed is set first, so the LoRA matrices start the same way on every run.
    """
    from peft import get_peft_model
    from transformers import set_seed

    from .models import load_base_model

    set_seed(config["training"].get("seed", 42))
    profile = _profile(config["profile"])
    if launched_processes() > 1:
        model = _load_base_model_for_this_process(profile)
    else:
        model = load_base_model(profile)
    return get_peft_model(model, lora_config(config))


# --------------------------------------------------------------------------- several processes

def launched_processes() -> int:
    """How many processes ``accelerate launch`` / ``torchrun`` started (``WORLD_SIZE``); 1 for a plain run."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 of a launch (or a plain run): the one process that prints, plots and tracks."""
    return int(os.environ.get("RANK", "0")) == 0


def _launched_with(*flags: str) -> bool:
    """Whether ``accelerate launch`` set one of these flags (e.g. ``ACCELERATE_USE_FSDP``) from its config."""
    return any(os.environ.get(flag, "").lower() in ("1", "true") for flag in flags)


def _load_base_model_for_this_process(profile: Profile):
    """The base model under a multi-process launch.

    ``device_map="auto"`` (the ``full`` profile) would spread EVERY process's copy over all GPUs;
    instead DDP gives each process a whole copy on its own GPU (``LOCAL_RANK``), and FSDP /
    DeepSpeed get the model on the CPU, untouched, and place (shard) it themselves.
    """
    from .models import load_base_model, require_model_dir, torch_dtype

    profile = dataclasses.replace(profile, device_map=None)
    if _launched_with("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        if profile.weights == "random":
            return load_base_model(profile, device="cpu")
        from transformers import AutoModelForCausalLM

        # no .to(): with fsdp_cpu_ram_efficient_loading only rank 0 holds real weights (the rest are on "meta")
        return AutoModelForCausalLM.from_pretrained(require_model_dir(profile), dtype=torch_dtype(profile))
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if _cuda() else "cpu"
    return load_base_model(profile, device=device)


# --------------------------------------------------------------------------- trainer

def training_arguments(config: dict, **extra):
    """``TrainingArguments`` from the config's ``training`` section."""
    from transformers import TrainingArguments

    settings = dict(config["training"])
    if config.get("batching") == "grouped":
        settings["train_sampling_strategy"] = "group_by_length"
    settings.setdefault("report_to", ["swanlab"] if config.get("swanlab") else "none")
    settings.setdefault("save_strategy", "steps")
    settings.setdefault("logging_first_step", True)
    settings.setdefault("dataloader_num_workers", 0)
    settings.setdefault("disable_tqdm", False)
    settings.setdefault("dataloader_pin_memory", _cuda())
    if settings.get("activation_checkpointing"):
        settings.setdefault("activation_checkpointing_kwargs", {"use_reentrant": False})
    processes = launched_processes()
    if processes > 1:
        # LoRA uses every trainable parameter in every forward: DDP need not search for unused ones
        settings.setdefault("ddp_find_unused_parameters", False)
        if not _cuda():
            # CPU-only machine: without use_cpu the processes do not join one gloo group and each
            # one would train alone as "rank 0" on the whole dataset
            settings.setdefault("use_cpu", True)
    settings.update(extra)
    # the collator needs each sample's "row" to log it
    settings["remove_unused_columns"] = False
    args = TrainingArguments(output_dir=str(output_dir(config)), **settings)
    if processes > 1 and args.world_size != processes:
        raise RuntimeError(
            f"{processes} processes were launched (WORLD_SIZE) but the Trainer sees world_size={args.world_size}: "
            "every process would train the whole dataset on its own. Launch with "
            "`accelerate launch --config_file configs/accelerate/<name>.yaml -m helpers.train ...`."
        )
    return args


class CheckpointCompleteCallback:
    """Marks a checkpoint complete only after the Trainer finished writing all of it."""

    def __new__(cls):
        from transformers import TrainerCallback

        class _Callback(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                if state.is_world_process_zero:
                    folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                    if folder.is_dir():
                        (folder / COMPLETE_MARKER).write_text(
                            json.dumps({"global_step": state.global_step, "time": time.time()}), encoding="utf-8"
                        )
                return control

        return _Callback()


def build_trainer(config: dict, model, tokenizer, dataset, **extra_args):
    """A ``Trainer`` with the padding-free collator, sample log and checkpoint marker."""
    from transformers import Trainer

    args = training_arguments(config, **extra_args)
    collator = SampleLogCollator(
        make_collator(config.get("batching", "packed"), tokenizer),
        log_path=Path(args.output_dir) / SAMPLE_LOG,
        rank=args.process_index,
    )
    return Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[CheckpointCompleteCallback()],
    )


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def fresh_run_dir(config: dict) -> Path | None:
    """Move an earlier run's folder aside (``<name>-previous-<time>``) so a new run starts clean.

    Nothing is deleted; returns where the old run went, or None.
    """
    out = output_dir(config)
    if not out.exists() or not any(out.iterdir()):
        return None
    target = out.with_name(f"{out.name}-previous-{time.strftime('%Y%m%d-%H%M%S')}")
    out.rename(target)
    return target


def resume_point(config: dict, resume: bool | str | None = True) -> Path | None:
    """The checkpoint to resume from: given, or the latest complete one (or none)."""
    if resume in (None, False):
        return None
    if isinstance(resume, (str, os.PathLike)) and resume is not True:
        return Path(resume)
    return find_latest_checkpoint(output_dir(config))


def plot_history(log_history: list[dict], path: Path | None = None, title: str = ""):
    """Loss and learning rate per step from the Trainer's own log; saved as PNG."""
    import matplotlib

    if path is not None and "ipykernel" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [e["step"] for e in log_history if "loss" in e]
    losses = [e["loss"] for e in log_history if "loss" in e]
    lrs = [e["learning_rate"] for e in log_history if "loss" in e and "learning_rate" in e]
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax_loss.plot(steps, losses, marker="o", markersize=3)
    ax_loss.set(xlabel="step", ylabel="train/loss", title=title or "training loss")
    ax_loss.grid(alpha=0.3)
    ax_lr.plot(steps[: len(lrs)], lrs, color="tab:orange")
    ax_lr.set(xlabel="step", ylabel="learning rate", title="learning rate")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


def loss_summary(log_history: list[dict]) -> tuple[float, float]:
    """(first logged loss, last logged loss)."""
    losses = [e["loss"] for e in log_history if "loss" in e]
    return losses[0], losses[-1]


def effective_batch_size(args) -> int:
    """Samples per optimizer step: per device x accumulation x processes."""
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size


# --------------------------------------------------------------------------- memory

def estimate_lora_memory_gb(
    params: float = 8.19e9,
    lora_params: float = 21_823_488,
    hidden: int = 4096,
    layers: int = 36,
    vocab: int = 151936,
    tokens_per_micro_batch: int = 4 * 254,
    gradient_checkpointing: bool = True,
) -> dict[str, float]:
    """Rough GPU memory (GB) for bf16 LoRA training; an estimate, not a measurement.

    * weights: 2 bytes per frozen parameter;
    * LoRA: fp32 weights + gradients + two Adam moments = 16 bytes per trainable parameter;
    * activations: with checkpointing only each layer's input is kept (2 bytes x hidden per token
      per layer) plus one layer being recomputed; without it about 34 x hidden bytes per token per layer
      (the usual estimate for a transformer block with a fused attention kernel);
    * logits: the fp32 logits and their gradient (8 bytes x vocab per token).
    """
    tokens = tokens_per_micro_batch
    per_layer_full = 34 * hidden * tokens
    if gradient_checkpointing:
        activations = 2 * hidden * tokens * layers + per_layer_full
    else:
        activations = per_layer_full * layers
    out = {
        "weights (bf16)": params * 2,
        "LoRA weights + grads + Adam (fp32)": lora_params * 16,
        "activations": activations,
        "logits + grad (fp32)": 8 * vocab * tokens,
    }
    out = {k: v / 1e9 for k, v in out.items()}
    out["total"] = sum(out.values())
    return out


# --------------------------------------------------------------------------- the whole run

def train(config: dict, resume: bool | str | None = True, from_notebook_03: bool = False) -> dict:
    """Run the whole recipe; return where everything went and the final numbers."""
    from transformers import set_seed

    from . import tracking
    from .models import load_tokenizer

    profile = _profile(config["profile"])
    set_seed(config["training"].get("seed", 42))
    tokenizer = load_tokenizer(profile)
    dataset = to_train_dataset(training_samples(config, tokenizer, from_notebook_03))
    # DeepSpeed ZeRO-3 (zero3_init_flag) partitions the weights while from_pretrained loads them only
    # if TrainingArguments exist already: keep them alive while the model is built
    early_args = training_arguments(config) if _launched_with("ACCELERATE_USE_DEEPSPEED") else None
    model = build_lora_model(config)
    del early_args
    trainer = build_trainer(config, model, tokenizer, dataset)
    is_main = trainer.args.process_index == 0
    run = None
    if config.get("swanlab") and is_main:
        run = tracking.start_run(
            config["swanlab"]["project"],
            config["swanlab"]["experiment_name"],
            config={"course_config": config},
        )
    checkpoint = resume_point(config, resume)
    if checkpoint is not None and is_main:
        print(f"Resuming from {display_path(checkpoint)}")
    try:
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    finally:
        swanlab_folder = tracking.finish_run(run) if run is not None else None
    out = output_dir(config)
    summary = {
        "profile": profile.name,
        "global_step": trainer.state.global_step,
        "train_runtime": result.metrics.get("train_runtime"),
        "train_samples_per_second": result.metrics.get("train_samples_per_second"),
        "train_loss": result.metrics.get("train_loss"),
        "effective_batch_size": effective_batch_size(trainer.args),
        "world_size": trainer.args.world_size,
        "checkpoint": find_latest_checkpoint(out),
        "output_dir": out,
        "swanlab_run": swanlab_folder,
        "log_history": trainer.state.log_history,
        "trainer": trainer,
    }
    if is_main:
        plot = workspace_path("plots", f"train-{profile.name}.png")
        plot_history(trainer.state.log_history, plot, title=f"{profile.name}: train/loss")
        summary["plot"] = plot
        saved = {k: (str(v) if isinstance(v, Path) else v) for k, v in summary.items()
                 if k not in ("trainer", "log_history")}
        (out / RUN_SUMMARY).write_text(json.dumps(saved, indent=2), encoding="utf-8")
    return summary


def describe_summary(summary: dict) -> str:
    lines = [
        f"profile            {summary['profile']}",
        f"global step        {summary['global_step']}",
        f"effective batch    {summary['effective_batch_size']} (per device x accumulation x {summary['world_size']} process(es))",
        f"train loss         {summary['train_loss']:.4f}" if summary.get("train_loss") is not None else "",
        f"adapter            {display_path(summary['checkpoint']) if summary['checkpoint'] else '-'}",
        f"checkpoints        {display_path(summary['output_dir'])}",
    ]
    if summary.get("plot"):
        lines.append(f"loss plot          {display_path(summary['plot'])}")
    if summary.get("swanlab_run"):
        from .tracking import swanlab_mode, sync_command

        lines.append(f"SwanLab run        {display_path(summary['swanlab_run'])} ({swanlab_mode()})")
        if swanlab_mode() == "offline":
            lines.append(f"upload it later    {sync_command(summary['swanlab_run'])}")
    return "\n".join(line for line in lines if line)


def train_memorisation_adapter() -> Path:
    """The tiny profile's memorisation adapter, trained fresh once and cached.

    Its run summary (:func:`load_run_summary`) holds the loss history and SwanLab run. It lives in its own folder (``workspace/checkpoints/tiny-memorisation``) and is
    reused only when it finished with exactly the current ``configs/train/tiny.yaml``;
    otherwise the old folder is moved aside and a fresh run trains.
    """
    config = load_config("tiny")
    config["output_dir"] = str(workspace_path("checkpoints", "tiny-memorisation"))
    out = output_dir(config)
    latest = find_latest_checkpoint(out)
    stamp = out / "course_config.json"
    wanted = json.dumps(config, sort_keys=True, default=str)
    finished = (out / RUN_SUMMARY).is_file() and stamp.is_file() and stamp.read_text(encoding="utf-8") == wanted
    if finished and latest is not None and _final_step(latest):
        swanlab_run = load_run_summary(out).get("swanlab_run")
        if swanlab_run is None or swanlab_run.is_dir():
            return latest
    fresh_run_dir(config)
    train(config, resume=False)
    stamp.write_text(wanted, encoding="utf-8")
    return find_latest_checkpoint(out)


def load_run_summary(folder: Path) -> dict:
    """A finished run's summary read back from disk, with the Trainer's log history of its last checkpoint."""
    summary = json.loads((Path(folder) / RUN_SUMMARY).read_text(encoding="utf-8"))
    for key in ("checkpoint", "output_dir", "swanlab_run", "plot"):
        if summary.get(key):
            summary[key] = Path(summary[key])
    state = json.loads((summary["checkpoint"] / "trainer_state.json").read_text(encoding="utf-8"))
    summary["log_history"] = state["log_history"]
    return summary


def _final_step(checkpoint: Path) -> bool:
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    return state["global_step"] >= state["max_steps"]


# --------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.train",
        description="Train the course's LoRA adapter (the same steps as notebook 04).",
    )
    parser.add_argument("--config", required=True, help="configs/train/tiny.yaml or configs/train/qwen3-8b.yaml")
    parser.add_argument("--output-dir", help="where checkpoints go (default workspace/checkpoints/<profile>)")
    parser.add_argument("--no-resume", action="store_true", help="start fresh even if checkpoints exist")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set training.max_steps=20 (repeatable)")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.overrides)
    if args.output_dir:
        config["output_dir"] = args.output_dir
    config = copy.deepcopy(config)
    summary = train(config, resume=not args.no_resume)
    if summary["trainer"].args.process_index == 0:
        print(describe_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
