"""The run spec: every course setting, resolved once, at the edge (:func:`build_spec`, frozen :class:`RunSpec`).

Where a setting comes from (the precedence rule, written once here):

1. ``--set section.key=value`` overrides on the command line (or ``overrides=``);
2. the training config (YAML). Its ``profile:`` is authoritative for that file;
3. environment variables (``QWEN3_TUTORIAL_*``), which beat
4. the git-ignored settings file ``course-settings.yaml`` (:mod:`helpers.settings`);
5. the course defaults.

The profile variable (or settings file) chooses WHICH config is used when none is
given. When a config is given and the variable names a different profile, the spec
is refused with a message naming both and the fix (``random8b`` may use the ``full``
recipe: same numbers, random weights).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from .hardware import cuda_available, liger_installed
from .profiles import Profile, choose_profile
from .settings import (
    PROFILE_ENV,
    SETTINGS_FILE,
    SpecError,
    course_settings,
    learner_given,
    refuse_run_dir,
    resolve_swanlab_mode,
    suggest,
)
from .workspace import REPO_ROOT, display_path, expand_home, named_path, repo_path, shareable_path

CONFIG_DIR = REPO_ROOT / "configs" / "train"
DEFAULT_SYSTEM_PROMPT = "现在你要扮演皇帝身边的女人--甄嬛"
DEFAULT_MAX_LENGTH = 1024
BATCHINGS = ("packed", "padded", "grouped")


# --------------------------------------------------------------------------- typed sections


@dataclass(frozen=True)
class DataSpec:
    source: str = "course"            # "course" (the profile's dataset) or a path to a JSON/JSONL file
    max_rows: int | None = None       # train on the first N rows only (None: all)
    max_length: int = DEFAULT_MAX_LENGTH  # longest sample in tokens; longer rows are dropped
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    eval_fraction: float = 0.0        # share of the rows held out for evaluation (grouped, leak-free)
    split_seed: int = 42              # seed of the held-out split


@dataclass(frozen=True)
class LoraSpec:
    r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class SwanLabSpec:
    project: str = "qwen3-8b-huanhuan-lora"
    experiment_name: str = "qwen3-8b-lora"
    mode: str = "offline"             # offline | online | local | disabled (resolved: see tracking)
    enabled: bool = True

    @property
    def report_to(self) -> list[str] | str:
        """``TrainingArguments(report_to=...)``: SwanLab, or ``"none"`` when tracking is off."""
        return ["swanlab"] if self.enabled and self.mode != "disabled" else "none"


@dataclass(frozen=True)
class Paths:
    workspace: Path
    model_dir: Path        # the base model directory (config.json, tokenizer, weights)
    dataset: Path | None   # the data file to train on (None: downloaded on first use)
    encoded: Path          # the encoded training set (notebook 03 / `helpers.data encode`)
    split_dir: Path        # train.json / eval.json of the held-out split
    run_dir: Path          # checkpoints, sample log, run summary
    export_dir: Path       # the merged model
    plots: Path
    swanlog: Path
    adapter_dir: Path | None  # an adapter chosen by the user (skip ahead); None: the run's latest


@dataclass(frozen=True)
class RunSpec:
    profile: Profile
    config_file: Path
    data: DataSpec
    lora: LoraSpec
    training: Mapping            # keyword arguments for transformers.TrainingArguments (read-only)
    batching: str
    quantization: str | None
    swanlab: SwanLabSpec
    paths: Paths
    #: where each top-level choice came from, for the banner and messages (display text: never tested by code)
    origin: Mapping = field(default_factory=dict)
    #: None or "liger" (``kernels:`` in the config; checked by :func:`check_kernels` when the spec is built)
    kernels: str | None = None
    #: what the learner named (:func:`~helpers.settings.learner_given`): the course never downloads over those paths
    given: frozenset[str] = frozenset()

    def describe(self) -> str:
        """A short report (Chinese) of what this run will use and why."""
        lines = [
            f"[档位] {self.profile.name}: {self.profile.description}",
            f"  选择依据: {self.origin.get('profile', '-')}",
            f"  训练配置: {display_path(self.config_file)}",
            f"  工作目录: {display_path(self.paths.workspace)}"
            + (f"（来自 {self.origin['workspace']}）" if "workspace" in self.origin else ""),
            f"  模型目录: {display_path(self.paths.model_dir)}",
        ]
        if self.paths.adapter_dir is not None:
            lines.append(f"  适配器: {display_path(self.paths.adapter_dir)}（adapter_dir，来自 {self.origin['adapter_dir']}）："
                         "推理和评估用它，不用自己训练的结果；恢复: python -m helpers.environment setup --adapter-dir \"\"")
        if self.quantization:
            lines.append(f"  量化: {self.quantization} (QLoRA)")
        if self.kernels:
            lines.append(f"  内核: {self.kernels}（Liger Kernel 的 Qwen3 融合算子）")
        if self.profile.name == "tiny":
            lines.append("  注意: tiny 模型的回答没有 Qwen3-8B 的水平，它只证明整条流程是对的。"
                         "在 GPU 机器上运行 python -m helpers.environment setup --profile full 使用真正的模型。")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Plain, JSON-ready values; paths relative to the workspace or repository (never machine paths)."""
        return {
            "profile": self.profile.name,
            "config_file": shareable_path(self.config_file, REPO_ROOT, self.paths.workspace),
            "data": {**dataclasses.asdict(self.data),   # a data file of the learner's: no machine path
                     "source": self.data.source if self.data.source == "course" else
                     shareable_path(self.paths.dataset, REPO_ROOT, self.paths.workspace)},
            "lora": {**dataclasses.asdict(self.lora), "target_modules": list(self.lora.target_modules)},
            "training": dict(self.training),
            "batching": self.batching,
            "quantization": self.quantization,
            "kernels": self.kernels,
            "swanlab": dataclasses.asdict(self.swanlab),
        }

    def replace(self, **changes) -> RunSpec:
        return dataclasses.replace(self, **changes)

    @property
    def own_run_dir(self) -> Path:
        """The profile's own run folder (``checkpoints/<profile>``, where notebook 04 trains), wherever this run is."""
        return default_run_dir(self.paths.workspace, self.profile.name)

    def with_run_dir(self, run_dir: str | os.PathLike) -> RunSpec:
        return self.replace(paths=dataclasses.replace(self.paths, run_dir=expand_home(run_dir).resolve()))


# --------------------------------------------------------------------------- optional kernels


def check_kernels(kernels: str | None, cuda: bool, source: str = "config") -> str | None:
    """``kernels: liger`` (Liger Kernel's Qwen3 patch) needs CUDA and the package (pyproject's ``gpu`` extra):
    refused here, before any model loads."""
    if kernels != "liger":
        return kernels
    if not cuda:
        raise SpecError(f"{source}：kernels: liger 需要 CUDA GPU（Liger 的内核是 Triton GPU 代码），这台机器没有："
                        "请删掉这一行，或者设置 kernels: null")
    if not liger_installed():
        raise SpecError(f"{source}：kernels: liger 需要 liger-kernel 包，但它没有安装：请运行 "
                        "pip install liger-kernel==0.8.5（或者设置 kernels: null）")
    return kernels


# --------------------------------------------------------------------------- config validation


TOP_LEVEL_KEYS = ("profile", "data", "batching", "quantization", "kernels", "lora", "training", "swanlab",
                  "output_dir")


def _actions(schema: type) -> dict:
    """The argparse actions ``transformers.HfArgumentParser`` makes for a dataclass: its type rules, reused."""
    from transformers import HfArgumentParser

    return {a.dest: a for a in HfArgumentParser(schema)._actions if a.dest != "help"}


def _coerce(value, action, dotted: str):
    """``value`` read from YAML, made the field's type by HfArgumentParser's own rules for that field.

    YAML 1.1 reads ``1e-4`` as text and ``no`` as false; a list or mapping (``report_to``,
    ``*_kwargs``) is kept as YAML gave it.
    """
    from transformers.hf_argparser import string_to_bool

    if value is None or isinstance(value, (list, dict)):
        return value
    if action.choices:
        value = "no" if value is False and "no" in action.choices else value
        if not isinstance(value, str) or value not in action.choices:
            raise SpecError(f"{dotted} 应当是 {', '.join(map(str, action.choices))} 之一，实际是 {value!r}")
        return value
    kind = action.type if action.type is not None else string_to_bool  # store_true flags are booleans
    try:
        if kind is string_to_bool:
            return string_to_bool(value)
        if kind in (int, float):
            number = float(value) if not isinstance(value, bool) else None
            if number is None or not math.isfinite(number) or (kind is int and not number.is_integer()):
                raise ValueError
            return value if isinstance(value, int) else kind(number)
        if kind is str and not isinstance(value, str):
            raise ValueError
    except (TypeError, ValueError, OverflowError, argparse.ArgumentTypeError):   # OverflowError: 400 digits
        what = {string_to_bool: "布尔值（true 或 false）", int: "整数", float: "有限的数字", str: "文本"}
        raise SpecError(f"{dotted} 应当是{what.get(kind, kind)}，实际是 {value!r}") from None
    return value


#: the training keys every config must set (notebook 04 shows each of them)
REQUIRED_TRAINING_KEYS = ("per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs",
                          "learning_rate", "lr_scheduler_type", "logging_steps", "save_steps",
                          "activation_checkpointing", "seed")


#: (dotted key, predicate, what it must be)
RANGES = (
    ("data.max_length", lambda v: v >= 1, "至少为 1"),
    ("data.max_rows", lambda v: v is None or v >= 1, "至少为 1，或者为 null（使用全部数据）"),
    ("data.eval_fraction", lambda v: 0 <= v < 1, "在 0 和 1 之间（0 表示不划分留出集）"),
    ("lora.r", lambda v: v >= 1, "至少为 1"),
    ("lora.lora_alpha", lambda v: v > 0, "大于 0"),
    ("lora.lora_dropout", lambda v: 0 <= v < 1, "在 0 和 1 之间"),
    ("training.per_device_train_batch_size", lambda v: v >= 1, "至少为 1"),
    ("training.gradient_accumulation_steps", lambda v: v >= 1, "至少为 1"),
    ("training.learning_rate", lambda v: 0 < v < 1, "在 0 和 1 之间（例如 1e-4）"),
    # the Trainer's steps are epochs x steps per epoch: 1e308 epochs overflowed into infinity inside it
    ("training.num_train_epochs", lambda v: 0 < v <= 10_000, "大于 0，最多 10000"),
    ("training.logging_steps", lambda v: v > 0, "大于 0"),
    ("training.save_steps", lambda v: v > 0, "大于 0"),
    ("training.save_total_limit", lambda v: v is None or v >= 1, "至少为 1，或者为 null（全部保留）"),
    ("training.report_to", lambda v: set([v] if isinstance(v, str) else v) <= {"none", "swanlab"},
     "是 none 或 swanlab：课程只装了 SwanLab，它的设置在 swanlab: 段（--set swanlab=null 关掉记录）"),
)


def validate_config(config: dict, source: str = "config") -> dict:
    """Check every key and type of a training config; return it with numbers as numbers.

    Unknown keys (with a close-match suggestion), wrong types and out-of-range values stop
    here, before any tokenizer or model loads, with the key's dotted name.
    """
    from transformers import TrainingArguments

    schemas = {"data": DataSpec, "lora": LoraSpec, "swanlab": SwanLabSpec, "training": TrainingArguments}
    out = {}
    for key, value in config.items():
        if key not in TOP_LEVEL_KEYS:   # a section's key without its section (--set max_steps=4): name the section
            owner = next((f"{s}.{key}" for s, schema in schemas.items() if key in _actions(schema)), None)
            hint = f"（是不是想写 {owner}？）" if owner else suggest(key, TOP_LEVEL_KEYS)
            raise SpecError(f"{source}：未知的键 {key!r}{hint}")
        out[key] = value
    for section, schema in schemas.items():
        values = out.get(section) or {}
        if not isinstance(values, dict):
            raise SpecError(f"{source}：{section} 下面应当是 key: value 形式的映射")
        actions = _actions(schema)
        if section == "swanlab":
            actions.pop("mode")  # resolved from the settings, not the config
        checked = {}
        for key, value in values.items():
            if key not in actions:
                known = "；training 下可以写 transformers.TrainingArguments 的参数" if section == "training" else ""
                raise SpecError(f"{source}：未知的键 {section}.{key}{suggest(key, actions)}{known}")
            if (section, key) == ("training", "output_dir"):
                raise SpecError(f"{source}：training.output_dir 不能写在配置里：运行目录用 --output-dir 指定"
                                "（notebook 里用 spec.with_run_dir）")
            if key == "target_modules":
                if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value):
                    raise SpecError(f"{source}：lora.target_modules 应当是由模块名组成的列表")
                checked[key] = tuple(value)
            else:
                checked[key] = _coerce(value, actions[key], f"{section}.{key}")
        out[section] = checked

    batching = out.get("batching", "packed")
    if batching not in BATCHINGS:
        raise SpecError(f"{source}：batching 应当是 {', '.join(BATCHINGS)} 之一，实际是 {batching!r}")
    if out.get("quantization") not in (None, "nf4"):
        raise SpecError(f"{source}：quantization 应当是 null 或 nf4，实际是 {out.get('quantization')!r}")
    if out.get("kernels") not in (None, "liger"):
        raise SpecError(f"{source}：kernels 应当是 null 或 liger，实际是 {out.get('kernels')!r}")
    for dotted, ok, must in RANGES:
        section, key = dotted.split(".")
        if key in (out.get(section) or {}):
            value = out[section][key]
            try:
                fine = ok(value)
            except TypeError:   # null where the predicate needs a number
                fine = False
            if not fine:
                raise SpecError(f"{source}：{dotted}={value!r} 必须{must}")
    return out


def read_config(path: Path) -> dict:
    import yaml

    path = Path(path)
    if path.is_dir():
        raise SpecError(f"--config {display_path(path)} 是文件夹：请传入 YAML 文件，例如 configs/train/tiny.yaml")
    if not path.is_file():
        ours = CONFIG_DIR / path.name
        hint = (f"是不是想写 --config {display_path(ours)}？" if ours.is_file() else
                "课程自带的配置在 configs/train/ 里：" + "、".join(p.name for p in sorted(CONFIG_DIR.glob("*.yaml"))))
        raise SpecError(f"--config {path}：没有这个文件。{hint}")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise SpecError(f"--config {display_path(path)} 不是有效的 YAML：{err}") from None
    if config is not None and not isinstance(config, dict):
        raise SpecError(f"{display_path(path)}：训练配置应当是 YAML 映射（key: value 形式的行）")
    return config or {}


# --------------------------------------------------------------------------- building the spec


def data_source_path(text: str, source: str) -> Path:
    """``data.source``: a JSON/JSONL file. A folder is refused now; a missing file only when the data is read
    (``data_files.course_dataset_path``): chatting with or exporting an adapter needs no data."""
    path = named_path(text)
    if path.is_dir():
        raise SpecError(f"{source}：data.source={text!r} 是文件夹：请给出一个 JSON/JSONL 数据文件，"
                        "或者写 `course` 使用 profile 自带的数据集。")
    return path


def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    """A copy of the config with each ``--set section.key=value`` applied (the value read as YAML)."""
    import yaml

    raw = dict(raw)
    for item in overrides or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--set {item!r} 应当写成 section.key=value 的形式（例如 training.max_steps=20）")
        keys = key.strip().split(".")
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            pass
        target = raw
        for part in keys[:-1]:
            section = target.get(part)
            target[part] = dict(section) if isinstance(section, dict) else ({} if section is None else section)
            target = target[part]
            if not isinstance(target, dict):
                raise SpecError(f"--set {'.'.join(keys)}：{part} 不是配置段（section）")
        target[keys[-1]] = value
    return raw


def requested_profile(flag: str | None, settings: dict, env: Mapping[str, str],
                      settings_file: Path | None) -> tuple[str | None, str]:
    """The profile asked for, and by what: a CLI flag beats the variable, which beats the settings file."""
    if flag:
        return flag, "--profile"
    requested = settings.get("profile", (None, None))[0]
    if requested is not None and not env.get(PROFILE_ENV, "").strip():
        return requested, f"{display_path(settings_file)} 中的 profile"
    return requested, PROFILE_ENV


def build_spec(
    config: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    *,
    profile: str | None = None,
    env: Mapping[str, str] | None = None,
    settings_file: Path | None = SETTINGS_FILE,
    output_dir: str | os.PathLike | None = None,
    cuda: bool | None = None,
) -> RunSpec:
    """Every course setting in one frozen :class:`RunSpec` (module docstring). ``config``: a YAML path (None: the
    profile's own); ``profile``: a caller's choice (a CLI flag) in the variable's place in the precedence rule;
    ``output_dir``: the run folder, relative paths from the repository like every path in a setting or a config (a
    command resolves what was typed in the shell first: :func:`~helpers.workspace.typed_paths`)."""
    env = os.environ if env is None else env
    settings = course_settings(env, settings_file)
    cuda = cuda_available() if cuda is None else cuda
    requested, requested_origin = requested_profile(profile, settings, env, settings_file)
    path = None if config is None else named_path(config)
    raw = {} if path is None else read_config(path)
    chosen, why = choose_profile(requested, raw.get("profile"), cuda=cuda, requested_origin=requested_origin,
                                 config_file=path)
    if path is None:
        path = CONFIG_DIR / f"{chosen.train_config}.yaml"
        raw = read_config(path)
    source = display_path(path) + (" 加上 " + " ".join(f"--set {item}" for item in overrides) if overrides else "")
    checked = validate_config(apply_overrides(raw, overrides), source=source)
    missing = [key for key in REQUIRED_TRAINING_KEYS if key not in checked["training"]]
    if missing:
        raise SpecError(f"{display_path(path)}：缺少 training.{missing[0]}（每个训练配置都要设置 "
                        f"{', '.join(REQUIRED_TRAINING_KEYS)}）")
    if checked.get("profile") not in (None, chosen.name, chosen.recipe):
        # an override changed profile: after the file was read; apply the rule again
        chosen, why = choose_profile(requested, checked["profile"], cuda=cuda, requested_origin=requested_origin,
                                     config_file=path)

    swanlab = SwanLabSpec(**{"enabled": bool(checked.get("swanlab")), **(checked.get("swanlab") or {}),
                             "mode": resolve_swanlab_mode(*settings.get("swanlab_mode", (None, "")), env)})
    data = DataSpec(**checked.get("data", {}))
    paths = resolve_paths(chosen, settings, output_dir or checked.get("output_dir"), (data.source, source))
    origin = {**{k: v[1] for k, v in settings.items()}, "profile": why,
              **({"dataset": source} if data.source != "course" else {})}
    return RunSpec(
        profile=chosen,
        config_file=path,
        data=data,
        lora=LoraSpec(**checked.get("lora", {})),
        training=MappingProxyType(dict(checked.get("training", {}))),
        batching=checked.get("batching", "packed"),
        quantization=checked.get("quantization"),
        kernels=check_kernels(checked.get("kernels"), cuda, source),
        swanlab=swanlab,
        paths=paths,
        origin=MappingProxyType(origin),
        given=learner_given(settings, modelscope=chosen.source == "modelscope", data_file=data.source != "course",
                            set_profile=requested if requested_origin != "--profile" else None),
    )


def default_run_dir(workspace: Path, profile: str) -> Path:
    """Where a profile's run goes without ``--output-dir``."""
    return workspace / "checkpoints" / profile


def resolve_paths(profile: Profile, settings: dict, output_dir: str | os.PathLike | None = None,
                  data_source: tuple[str, str] = ("course", "")) -> Paths:
    """Every path of a run; ``data_source``: (``data.source``, the config it came from)."""
    workspace = repo_path(settings["workspace"][0]) if "workspace" in settings else REPO_ROOT / "workspace"
    models = workspace / "models"
    if "model_dir" in settings and profile.source == "modelscope":
        model_dir = repo_path(settings["model_dir"][0])
    elif profile.source == "modelscope":
        model_dir = models / "modelscope" / "Qwen" / profile.model
    else:
        model_dir = models / profile.model_dirname
    if data_source[0] != "course":
        dataset = data_source_path(*data_source)
    elif "dataset" in settings:
        dataset = repo_path(settings["dataset"][0])
    elif profile.source == "tiny":  # the shipped sample
        dataset = REPO_ROOT / "data" / "huanhuan_sample.json"
    else:
        dataset = workspace / "data" / "huanhuan.json"
    run_dir = repo_path(output_dir) if output_dir else default_run_dir(workspace, profile.name)
    if output_dir:
        refuse_run_dir(run_dir, {"workspace": workspace, "model_dir": model_dir, "dataset": dataset})
    return Paths(
        workspace=workspace,
        model_dir=model_dir,
        dataset=dataset,
        encoded=workspace / "data" / f"train-{profile.name}.jsonl",
        split_dir=workspace / "data" / f"split-{profile.name}",
        run_dir=run_dir,
        export_dir=workspace / "export" / f"{profile.name}-merged",
        plots=workspace / "plots",
        swanlog=workspace / "swanlog",
        adapter_dir=repo_path(settings["adapter_dir"][0]) if "adapter_dir" in settings else None,
    )
