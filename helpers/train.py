"""Notebook 04: LoRA training with the Trainer, tracked by SwanLab, crash-safe.

Notebook 04 shows each step as a cell (``from_pretrained``, ``LoraConfig`` +
``get_peft_model``, ``TrainingArguments``, ``Trainer``); ``python -m helpers.train
--config configs/train/<name>.yaml`` runs the very same steps from a shell (and under
``accelerate launch`` for several GPUs), through :func:`train`. This module holds the
step functions both use and the plumbing around them (sample log, memory log).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import sys
from pathlib import Path

from transformers import TrainerCallback

from . import checkpoints, data_files, tracking
from .checkpoints import KEEP_PREVIOUS_RUNS, RECIPE_FILE, adapter_recipe, base_model_name, refuse_trained_lora
from .data import training_data
from .download import model_ready, prepare_model
from .errors import ArgumentParser, CourseError, run_cli
from .hardware import cuda_available, gpus, is_main_process, launched_processes, local_gpu, peak_memory_gib
from .models import (
    add_lora_adapter,
    compute_dtype,
    load_base_model,
    load_tokenizer,
    refuse_without_gpu,
    require_model_dir,
)
from .recipes import auto_recipe
from .runs import SAMPLE_LOG, describe_summary, finished_summary, record_run, resume_point, start_fresh
from .settings import SpecError
from .spec import build_spec
from .workspace import (
    CREATED,
    WHOLE,
    DiskFullError,
    claim_folder,
    course_folder,
    display_path,
    is_disk_full,
    made_names,
    shareable_path,
    typed_paths,
)

# --------------------------------------------------------------------------- data


def to_train_dataset(samples: list[dict]):
    """``data_files.to_dataset`` plus each sample's row number, which the sample log records."""
    return data_files.to_dataset(samples).add_column("row", [s.get("row", i) for i, s in enumerate(samples)])


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
        rows = [int(f["row"]) for f in features if "row" in f]
        if self.log_path is not None and rows:
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
    raise ValueError(f"batching 只能是 packed、padded 或 grouped，不能是 {batching!r}")


# --------------------------------------------------------------------------- model


def apply_kernels(spec) -> list[str]:
    """``kernels: liger``: Liger Kernel's Qwen3 patch (RMSNorm, SwiGLU, RoPE and the fused linear
    cross-entropy, which never holds the 151,936-wide logits), applied to the transformers classes
    BEFORE the model is built. The spec was checked when it was built (CUDA and the package present)."""
    if spec.kernels != "liger":
        return []
    from liger_kernel.transformers import apply_liger_kernel_to_qwen3

    apply_liger_kernel_to_qwen3(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                fused_linear_cross_entropy=True)
    return ["rope", "rms_norm", "swiglu", "fused_linear_cross_entropy"]


def load_model_for_training(spec):
    """The base model, ready for LoRA: on this process's device, ``use_cache`` off, k-bit prepared for QLoRA
    (and Liger's kernels patched in first when the spec asks for ``kernels: liger``)."""
    apply_kernels(spec)
    if launched_processes() > 1:
        model = _load_base_model_for_this_process(spec)
    else:
        model = load_base_model(spec, for_training=True)
    if spec.quantization:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=bool(spec.training.get("activation_checkpointing")))
    model.config.use_cache = False
    return model


def add_lora(spec, model):
    """``get_peft_model`` with the spec's LoRA config; seeded, so the adapters start the same way every run."""
    from transformers import set_seed

    set_seed(spec.training.get("seed", 42))
    return add_lora_adapter(model, spec.lora)


# --------------------------------------------------------------------------- several processes


def _launched_with(*flags: str) -> bool:
    """Whether ``accelerate launch`` set one of these flags (e.g. ``ACCELERATE_USE_FSDP``) from its config."""
    return any(os.environ.get(flag, "").lower() in ("1", "true") for flag in flags)


def _load_base_model_for_this_process(spec):
    """The base model under a multi-process launch.

    DDP gives each process a whole copy on its own GPU (``LOCAL_RANK``); FSDP / DeepSpeed
    get the model on the CPU, untouched, and place (shard) it themselves.
    """
    single = spec.replace(profile=dataclasses.replace(spec.profile, device_map=None))
    if _launched_with("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        if spec.profile.weights == "random":
            return load_base_model(single, device="cpu", for_training=True)
        from transformers import AutoModelForCausalLM

        # no .to(): with fsdp_cpu_ram_efficient_loading only rank 0 holds real weights (the rest are on "meta")
        return AutoModelForCausalLM.from_pretrained(require_model_dir(spec), dtype=compute_dtype(spec))
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if cuda_available() else "cpu"
    return load_base_model(single, device=device, for_training=True)


# --------------------------------------------------------------------------- trainer


def mixed_precision(spec) -> tuple[bool, bool]:
    """(bf16, fp16): the config's bf16, or fp16 with loss scaling on a GPU without bf16 (V100, T4)."""
    import torch

    wanted = bool(spec.training.get("bf16", False))
    use_bf16 = wanted and compute_dtype(spec) is torch.bfloat16
    use_fp16 = (wanted and not use_bf16 and torch.cuda.is_available()) or bool(spec.training.get("fp16", False))
    if wanted and not (use_bf16 or use_fp16) and is_main_process():
        print(f"training.bf16: true 在这台机器上用不了（{spec.profile.name} 按 {compute_dtype(spec)} 计算，"
              "没有支持 bf16 的 GPU），本次按 fp32 训练")
    return use_bf16, use_fp16


def training_arguments(spec, **extra):
    """``TrainingArguments`` from the spec: the config's ``training`` section plus the course's fixed choices.

    Notebook 04 writes the same call out argument by argument and asserts the two are equal.
    """
    import torch
    from transformers import TrainingArguments

    t = spec.training
    use_bf16, use_fp16 = mixed_precision(spec)
    held_out = spec.data.eval_fraction > 0
    defaults = dict(
        logging_first_step=True,
        save_strategy="steps",
        save_total_limit=3,
        eval_strategy="epoch",
        per_device_eval_batch_size=t["per_device_train_batch_size"],
        metric_for_best_model="eval_loss" if held_out else None,
        activation_checkpointing_kwargs={"use_reentrant": False} if t["activation_checkpointing"] else None,
        train_sampling_strategy="group_by_length" if spec.batching == "grouped" else "random",
        report_to=spec.swanlab.report_to,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=False,
    )
    # the config's values win over the defaults; precision, evaluation and the "row" column are decided here
    settings = {**defaults, **t, "bf16": use_bf16, "fp16": use_fp16,
                "remove_unused_columns": False}  # the collator needs each sample's "row"
    if not held_out:
        settings["eval_strategy"] = "no"
    processes = launched_processes()
    if processes > 1:
        # LoRA uses every trainable parameter in every forward: DDP need not search for unused ones
        settings.setdefault("ddp_find_unused_parameters", False)
        if not cuda_available():
            # CPU-only machine: without use_cpu the processes do not join one gloo group
            settings.setdefault("use_cpu", True)
    settings.update(extra)
    try:
        args = TrainingArguments(output_dir=str(spec.paths.run_dir), **settings)
    except ValueError as err:  # a value (or combination) that passed the type checks but not TrainingArguments'
        raise SpecError(f"{display_path(spec.config_file)}：TrainingArguments 不接受 training 部分的设置："
                        f"{err}") from None
    if processes > 1 and args.world_size != processes:
        raise CourseError(
            f"启动了 {processes} 个进程（WORLD_SIZE），但 Trainer 看到的是 world_size={args.world_size}："
            "每个进程都会各自训练整个数据集。请这样启动："
            "`accelerate launch --config_file configs/accelerate/<name>.yaml -m helpers.train ...`。"
        )
    if processes == 1 and args.n_gpu > 1:
        # one process sees several GPUs: the Trainer would wrap the model in nn.DataParallel (a copy of the 8B
        # to every GPU on every step, a batch the size of all GPUs'); the model sits on one, so train on that one,
        # as the Trainer does itself for a model placed across GPUs
        if is_main_process():
            print(f"这台机器有 {args.n_gpu} 块 GPU，单进程训练只用第一块；要用全部：accelerate launch "
                  f"--config_file configs/accelerate/ddp.yaml --num_processes {args.n_gpu} -m helpers.train ...（第 07 课）")
        args._n_gpu = 1
    return args


def shareable_args(args, spec):
    """A copy of the ``TrainingArguments`` whose ``output_dir`` (and TRL's ``chat_template_path``) is no
    machine path (for files that get shared)."""
    import copy

    shared = copy.copy(args)
    shared.output_dir = shareable_path(spec.paths.run_dir, spec.paths.workspace)
    if getattr(shared, "chat_template_path", None):
        shared.chat_template_path = shareable_path(Path(shared.chat_template_path), spec.paths.workspace)
    return shared


class CheckpointComplete(TrainerCallback):
    """Marks a checkpoint complete only after the Trainer finished writing all of it (recipe + sha256 marker)."""

    def __init__(self, spec):
        self.spec = spec
        self.recipe = adapter_recipe(spec)
        # made before the Trainer (whose __init__ creates output_dir): a folder already there without a marker is
        # someone else's (or older), never claimed
        run_dir = spec.paths.run_dir
        self.foreign = run_dir.exists() and made_names(run_dir) is None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        run_dir = Path(args.output_dir)
        if state.is_world_process_zero and not run_dir.exists():   # moved aside by a fresh start: made anew
            course_folder(run_dir, only=checkpoints.RUN_FILES)
        elif state.is_world_process_zero and made_names(run_dir) is None and not self.foreign:
            claim_folder(run_dir, only=checkpoints.RUN_FILES)   # the run folder the Trainer made (notebook 04)
        elif state.is_world_process_zero and made_names(run_dir) == {CREATED, WHOLE}:
            claim_folder(run_dir, only=checkpoints.RUN_FILES)   # marked whole by an older course: a note there is kept
        if state.global_step == 0 and args.world_size == 1 and model is not None:
            refuse_trained_lora(model)
        # a resumed state names its best checkpoint by folder name (see checkpoints.share_safe_trainer_state), which
        # transformers looks for in the working directory and drops; the Trainer's rotation needs the full path to
        # keep it: found in the run folder by its step, as transformers itself does at its next save
        best = Path(args.output_dir) / f"checkpoint-{state.best_global_step}" if state.best_global_step else None
        if best is not None and best.is_dir():
            state.best_model_checkpoint = str(best)
        return control

    def on_save(self, args, state, control, **kwargs):
        import torch
        from transformers.trainer import TRAINING_ARGS_NAME

        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            checkpoints.share_safe_adapter_config(folder, self.recipe["base_model"])
            checkpoints.share_safe_trainer_state(folder)
            if (folder / TRAINING_ARGS_NAME).is_file():
                torch.save(shareable_args(args, self.spec), folder / TRAINING_ARGS_NAME)
            (folder / RECIPE_FILE).write_text(json.dumps(self.recipe, ensure_ascii=False, indent=1), encoding="utf-8")
            checkpoints.write_marker(folder, state.global_step)
        return control


class MemoryLog(TrainerCallback):
    """Peak GPU memory (GiB; on CPU the process RSS) next to every logged loss, like ms-swift's memory(GiB).

    The Trainer's own SwanLab callback has already sent ``logs`` when this runs, so the value is logged to
    the active SwanLab run directly, as ``train/memory_gib`` at the same step.
    """

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and "loss" in logs and state.is_world_process_zero:
            memory = round(peak_memory_gib(), 3)
            logs["memory_gib"] = memory
            swanlab = sys.modules.get("swanlab")  # never imported (or not installed): no run can be active
            if swanlab is not None and tracking.active_run(swanlab) is not None:
                swanlab.log({"train/memory_gib": memory}, step=state.global_step)
        return control


class SaveBestEval(TrainerCallback):
    """Saves a checkpoint whenever the held-out loss reaches a new low (e.g. at an epoch's end that is
    not a save step), so the best checkpoint named in the run summary exists."""

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get("eval_loss")
        if value is not None and args.metric_for_best_model in ("eval_loss", "loss") and \
                (state.best_metric is None or value < state.best_metric):
            control.should_save = True
        return control


def course_callbacks(spec) -> list:
    """The checkpoint proof (recipe + marker with sha256), the memory log and the save-on-best, as callbacks."""
    return [CheckpointComplete(spec), MemoryLog(), SaveBestEval()]


def share_safe_swanlab(trainer, spec) -> None:
    """The trainer's SwanLab callback logs the run's config without machine paths (``tracking.share_safe_swanlab``)."""
    tracking.share_safe_swanlab(trainer, base_model_name(spec), lambda args: shareable_args(args, spec))


def build_trainer(spec, model, tokenizer, train_dataset, eval_dataset=None, args=None):
    """A ``Trainer`` with the padding-free collator, sample log, checkpoint proof and memory log."""
    from transformers import Trainer

    args = args or training_arguments(spec)
    collator = SampleLogCollator(
        make_collator(spec.batching, tokenizer),
        log_path=Path(args.output_dir) / SAMPLE_LOG,
        rank=args.process_index,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=course_callbacks(spec),
    )
    share_safe_swanlab(trainer, spec)
    return trainer


# --------------------------------------------------------------------------- the whole run


def train(spec, resume: bool | str | None = True) -> dict:
    """Run the whole recipe with the same steps as notebook 04; return where everything went."""
    refuse_without_gpu(spec, "训练")
    tracking.require_key(spec)
    data_files.require_given_dataset(spec)   # a missing data file stops before the model is built or downloaded
    if spec.quantization and _launched_with("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        # their loading path takes no quantization_config: the base would train unquantised, in fp32
        raise SpecError(f"quantization: {spec.quantization}（QLoRA）在本课程里不能和 FSDP 或 DeepSpeed 一起用："
                        "QLoRA 请用 configs/accelerate/ddp.yaml 启动，或者用 fsdp.yaml / zero3.yaml 切分 bf16 的配置"
                        "（configs/train/qwen3-8b.yaml）。")
    if is_main_process():
        prepare_model(spec)  # a terminal user never needs a notebook first
    else:
        _wait_for_model(spec)
    with contextlib.ExitStack() as stack:
        if is_main_process():  # the other ranks of a launch share rank 0's lock
            stack.callback(checkpoints.lock_run(spec.paths.run_dir).release)
        if resume is False and is_main_process():   # rank 0 holds the lock: only it may move a run aside
            start_fresh(spec)
        # where to resume, checked against these settings before anything is loaded
        checkpoint = resume_point(spec, resume if resume is not False else None)
        # the arguments before the data and the model, as transformers' own example scripts do: a value
        # TrainingArguments refuses stops the run before anything is written or loaded, and DeepSpeed ZeRO-3
        # partitions the weights while from_pretrained loads them only if TrainingArguments exist already
        args = training_arguments(spec)
        finished = finished_summary(spec, checkpoint, args)
        if finished is not None:          # nothing left to train: no model loaded, no empty SwanLab run
            return {**finished, "trainer": None}
        if checkpoint is not None and is_main_process():
            print(f"从 {display_path(checkpoint)} 继续训练")
        tokenizer = load_tokenizer(spec)
        samples, eval_samples = training_data(spec, tokenizer, verbose=is_main_process())
        # after the data and argument checks: a refused run leaves no folder
        course_folder(spec.paths.run_dir, only=checkpoints.RUN_FILES)
        dataset = to_train_dataset(samples)
        # no "row" column: the sample log records training batches only, never evaluation ones
        eval_dataset = data_files.to_dataset(eval_samples) if eval_samples else None
        model = add_lora(spec, load_model_for_training(spec))
        trainer = build_trainer(spec, model, tokenizer, dataset, eval_dataset, args=args)
        is_main = trainer.args.process_index == 0
        run = None
        if is_main and "swanlab" in (trainer.args.report_to or []):
            run = tracking.start_run(spec)
        try:
            result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        except Exception as err:
            if isinstance(err, CourseError) or not is_disk_full(err):
                raise
            raise DiskFullError(errno.ENOSPC, f"训练写入 {display_path(spec.paths.run_dir)} 时（保存检查点）磁盘满了："
                                "腾出一些空间后，再运行同一条命令，它会从最后一个完整的检查点继续。") from err
        finally:   # a failed or interrupted training is recorded as such, not as a success
            swanlab_folder = tracking.finish_run(run, error=sys.exc_info()[1]) if run is not None else None
        summary = record_run(spec, trainer, result.metrics, swanlab_folder, checkpoint)
    summary["trainer"] = trainer
    return summary


def _wait_for_model(spec, timeout: float = 4 * 3600, poll: float = 2.0) -> None:
    """Another process of a launch: wait while process 0 prepares (perhaps downloads, 16 GB) the model folder.
    Config and tokenizer arrive first, so their presence alone does not mean the folder is ready."""
    import time

    deadline = time.time() + timeout
    while not model_ready(spec):
        if time.time() > deadline:
            raise CourseError(f"进程 0 在 {timeout:.0f} s 内没有准备好 {display_path(spec.paths.model_dir)}："
                              "先下载模型（python -m helpers.download），再重新启动。")
        time.sleep(poll)


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m helpers.train",
        description="训练课程的 LoRA 适配器（与第 04 课的步骤相同）。",
    )
    parser.add_argument("--config", help="训练配置：configs/train/tiny.yaml、qwen3-8b.yaml 等（默认：当前档位自己的）")
    parser.add_argument("--output-dir", help="检查点保存到哪里（默认 workspace/checkpoints/<profile>）")
    parser.add_argument("--no-resume", action="store_true",
                        help=f"从头训练：上一次的运行目录改名放在一旁并打印新路径（只保留最近 {KEEP_PREVIOUS_RUNS} 次，更早的会删除）")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="覆盖一个配置值，例如 --set training.max_steps=20（可重复）")
    parser.add_argument("--recipe", choices=["auto"],
                        help="auto：在估计显存放得下这张 GPU 空闲显存的配方里选最快的（bf16 LoRA 或 4-bit QLoRA、"
                             "activation checkpointing、微批次大小），并打印选了哪个、为什么。没有 GPU 时保留给定的配置")
    parser.add_argument("--debug", action="store_true", help="出错时显示完整的 traceback")
    args = typed_paths(parser, argv, "output_dir")

    def work() -> int:
        spec = build_spec(args.config, args.overrides, output_dir=args.output_dir)
        if args.recipe == "auto":
            found = gpus(only=local_gpu())   # this process's GPU only: no CUDA context on the others
            config, overrides, why = auto_recipe(args.config, args.overrides, spec.profile.name,
                                                 found[0] if found else None)
            if is_main_process():
                print(why)
            spec = build_spec(config, overrides, output_dir=args.output_dir)
        if is_main_process():
            print(spec.describe())
        summary = train(spec, resume=False if args.no_resume else True)
        if is_main_process():
            print(describe_summary(summary))
        return 0

    return run_cli(work, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
