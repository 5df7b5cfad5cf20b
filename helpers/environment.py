"""Notebook 00 and ``make preflight``: package versions, the settings file, the Jupyter kernel and
the pass/fail checklist (``python -m helpers.environment setup | kernel | check [--json]``).

The settings file ``course-settings.yaml`` is what every kernel reads: JupyterLab on AutoDL is started
by the platform, so variables exported in a terminal never reach it. Another kernel still holding GPU
memory is the most common failure in class: hence :func:`warn_if_gpu_busy` and :func:`gpu_memory_report`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from . import checkpoints
from .data_files import HUANHUAN_PINNED_URL
from .download import BUDGET_TOTAL, disk_budget_gb, weights_gb
from .errors import ArgumentParser, CourseError, run_cli
from .hardware import gpus, memory_gb, reachable
from .models import other_model, weights_present
from .profiles import PROFILES
from .recipes import choose
from .settings import (
    PATH_KEYS,
    SETTINGS_FILE,
    SETTINGS_KEYS,
    SWANLAB_MODES,
    SpecError,
    and_unset,
    has_swanlab_key,
    overriding_variable,
    read_settings_file,
    suggest,
)
from .spec import build_spec
from .workspace import (
    REPO_ROOT,
    atomic_path,
    blocking_file,
    display_path,
    expand_home,
    free_disk_gb,
    named_path,
    nearest_existing,
    repo_command,
)

#: Packages whose versions matter for the course (what requirements.txt pins).
KEY_PACKAGES = [
    "torch", "transformers", "peft", "accelerate", "datasets", "modelscope",
    "swanlab", "jupyterlab", "ipywidgets", "nbval", "bitsandbytes",
]
#: The Jupyter kernel ``make kernel`` registers for the course's .venv.
KERNEL_NAME = "qwen3-lora-course"
KERNEL_DISPLAY = "Qwen3 LoRA course (.venv)"
#: :func:`package_versions`' value for a package that is missing
NOT_INSTALLED = "没有安装"


def package_versions() -> dict[str, str]:
    """Installed version of each course package, or :data:`NOT_INSTALLED`."""
    out = {"python": platform.python_version()}
    for name in KEY_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = NOT_INSTALLED
    return out


def pinned_versions() -> dict[str, str]:
    """``name: version`` from requirements.txt (and torch from requirements-cpu.txt)."""
    pins = {}
    for name in ("requirements.txt", "requirements-cpu.txt"):
        path = REPO_ROOT / name
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                line = line.split("#", 1)[0]  # an inline comment is not part of the pin
                if "==" in line:
                    package, version = line.split("==", 1)
                    pins[package.strip().lower()] = version.split(";")[0].strip()
    return pins


def gpu_memory_held_by_others() -> float | None:
    """GB of GPU 0 held by other processes (e.g. a previous notebook's kernel), or None without a GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info(0)
    mine = torch.cuda.memory_reserved(0)
    return max(0.0, (total - free - mine) / 1e9)


SHUT_DOWN_HOW = ("JupyterLab 菜单 Kernel → Shut Down Kernel，或左侧边栏“运行中的终端和内核”"
                 "（Running Terminals and Kernels）面板里点 Shut Down")


def gpu_memory_report() -> str:
    """One Chinese line for a GPU notebook's last cell: the GPU memory this kernel holds, and how to free it."""
    import torch

    if not torch.cuda.is_available():
        return "本机没有 CUDA GPU，本内核不占显存。进入下一个 notebook 前仍建议关闭本内核（释放内存）：" + SHUT_DOWN_HOW + "。"
    reserved = sum(torch.cuda.memory_reserved(i) for i in range(torch.cuda.device_count())) / 1e9
    allocated = sum(torch.cuda.memory_allocated(i) for i in range(torch.cuda.device_count())) / 1e9
    return (f"本内核占用 GPU 显存 {reserved:.1f} GB（其中张量 {allocated:.1f} GB，另有约 0.5 GB CUDA 上下文）。"
            f"下一个 notebook 需要这些显存：请先关闭本内核——{SHUT_DOWN_HOW}。")


def warn_if_gpu_busy(threshold_gb: float = 1.0) -> None:
    """For a GPU notebook's first cell: print a Chinese warning when another process holds GPU memory.

    This kernel's own CUDA context (~0.5 GB) counts as "other" for torch, so the threshold sits above it.
    """
    import torch

    held = gpu_memory_held_by_others()
    if held is None:
        print("本机没有 CUDA GPU：跳过显存检查。")
    elif held > threshold_gb:
        print(f"⚠ 警告：另有进程占用 GPU 显存 {held:.1f} GB，多半是上一个 notebook 的内核还开着。"
              f"请先关闭它（{SHUT_DOWN_HOW}；终端里 `nvidia-smi` 可看到占用显存的进程），"
              "再重启本内核，否则模型可能放不下或被部分放到 CPU 上。")
    else:
        print(f"GPU 显存空闲：其他进程只占 {held:.1f} GB。")
    if held is not None and torch.cuda.device_count() > 1:
        print(f"这台机器有 {torch.cuda.device_count()} 块 GPU，笔记本只用第一块；但单进程的 Trainer 看到多块 GPU 会用 "
              "nn.DataParallel 每一步把模型复制到每一块上（慢，批次也跟着变大）。启动 JupyterLab 前设置 "
              "CUDA_VISIBLE_DEVICES=0；多卡训练用第 07 课的 accelerate launch。")


# --------------------------------------------------------------------------- the settings file


def write_settings(values: dict, path: Path = SETTINGS_FILE) -> Path:
    """Merge ``values`` into the settings file (None removes a key); never holds an API key."""
    unknown = sorted(set(values) - set(SETTINGS_KEYS))
    if unknown:
        raise SpecError(f"没有 {unknown[0]!r} 这个设置；可用的设置：{', '.join(SETTINGS_KEYS)}。")
    choices = {"profile": (*PROFILES, "auto"), "swanlab_mode": SWANLAB_MODES}
    values = dict(values)
    for key, known in choices.items():
        if isinstance(values.get(key), str):   # written as every reader reads it: " TINY " is tiny
            values[key] = values[key].strip().lower()
        if values.get(key) and values[key] not in known:
            raise SpecError(f"--{key.replace('_', '-')} {values[key]!r} 不是 {', '.join(known)} 之一"
                            f"{suggest(values[key], known)}；什么都没有写入。")
    current = read_settings_file(path)
    for key, value in values.items():
        if value is None or value == "":
            current.pop(key, None)
        else:
            current[key] = str(value)
    lines = ["# 课程设置：每个内核和命令都读它（git 忽略此文件）。环境变量优先于它。",
             "# 由 `python -m helpers.environment setup` 或 notebook 00 写入。"]
    lines += [f"{key}: {json.dumps(value, ensure_ascii=False)}" for key, value in current.items()]
    with atomic_path(path) as partial:
        partial.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def kernel_problem() -> str | None:
    """What is wrong with the course's Jupyter kernel (None: registered, and it starts this Python). A kernel
    registered from a moved or deleted clone cannot start, or runs that clone's helpers."""
    try:
        from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

        python = KernelSpecManager().get_kernel_spec(KERNEL_NAME).argv[0]
    except (ImportError, NoSuchKernel, IndexError):
        return "没有注册"
    if not Path(python).exists():
        return f"已注册，但它的 Python {python} 不存在（仓库被移动或删除过？）"
    # by folder (.venv/bin/python and .venv/bin/python3 are the same environment), a linked folder followed (a .venv
    # reached through a link is the same one); the python in it is a link to the system's, never followed
    kernel_bin, this_bin = (Path(os.path.abspath(p)).parent.resolve() for p in (python, sys.executable))
    if kernel_bin != this_bin:
        return f"已注册，但它启动的是 {display_path(kernel_bin)} 里的 Python，不是这里的 {display_path(this_bin)}"
    return None


# --------------------------------------------------------------------------- the pre-flight check


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _disk_check(spec, model_present: bool, free_gb: float | None) -> Check:
    """Room for the model, checkpoints and export on the workspace's disk, and a workspace that takes writes."""
    free = free_disk_gb(spec.paths.workspace) if free_gb is None else free_gb
    need = disk_budget_gb(model_present, spec.profile.model)[BUDGET_TOTAL] if spec.profile.source == "modelscope" else 1.0
    a_file = blocking_file(spec.paths.workspace)
    # a read-only disk (a mount, a folder of another user's) takes nothing: training found out at its first write
    read_only = a_file is None and not os.access(nearest_existing(spec.paths.workspace), os.W_OK)
    return Check("disk", free >= need and a_file is None and not read_only,
                 f"工作目录 {display_path(spec.paths.workspace)} 放不下：{display_path(a_file)} 是文件，不是文件夹"
                 if a_file is not None else
                 f"工作目录 {display_path(spec.paths.workspace)} 不可写（只读的磁盘，或者没有写权限）" if read_only else
                 f"{display_path(spec.paths.workspace)} 所在磁盘空闲 {free:.1f} GB，需要 {need:.1f} GB",
                 "把工作目录放到数据盘上：python -m helpers.environment setup "
                 "--workspace ~/autodl-tmp/qwen3-workspace" + and_unset("workspace"))


def preflight(spec, *, gpu_list=None, free_gb=None, versions=None, pins=None, kernel=None,
              dataset_reachable=None, memory=None, swanlab_key=None) -> list[Check]:
    """Every check of ``make preflight``; the keyword arguments let tests fake each failure.

    ``memory``: (total, available) system memory in GB. ``swanlab_key``: whether SwanLab has an API key.
    A check that passes carries no fix.
    """
    checks = []
    versions = package_versions() if versions is None else versions
    pins = pinned_versions() if pins is None else pins
    python_ok = sys.version_info >= (3, 10) if "python" not in versions else \
        tuple(int(x) for x in versions["python"].split(".")[:2]) >= (3, 10)
    checks.append(Check("python", python_ok, versions.get("python", platform.python_version()),
                        "" if python_ok else "安装 Python 3.10 或更新的版本"))
    wrong = [f"{name} {versions.get(name)}（固定为 {pin}）" for name, pin in pins.items()
             if name in versions and name != "torch" and versions[name] != pin]
    missing = [name for name in KEY_PACKAGES if versions.get(name) == NOT_INSTALLED and name in pins]
    checks.append(Check("packages", not wrong and not missing,
                        "固定的版本全部已安装" if not wrong and not missing else
                        "；".join(wrong + [f"{m} 没有安装" for m in missing]),
                        repo_command("make venv（或者：pip install -r requirements.txt）")))
    gpu_list = gpus() if gpu_list is None else gpu_list
    gpu_profile = spec.profile.needs_gpu
    checks.append(_gpu_check(spec, gpu_list, gpu_profile))
    total, available = memory_gb() if memory is None else memory
    # loading Qwen3-8B goes shard by shard (safetensors are memory-mapped); the tiny profile trains on the CPU
    need_memory = 8.0 if gpu_profile else 2.0
    checks.append(Check("memory", available >= need_memory,
                        f"可用 {available:.1f} GB / 共 {total:.1f} GB，需要 {need_memory:.0f} GB",
                        "关掉其他程序和 notebook 的内核，或者换一台内存更大的机器"))
    model_present = weights_present(spec.paths.model_dir)   # an interrupted download has a config and some shards
    checks.append(_disk_check(spec, model_present, free_gb))
    checks += _files_checks(spec, model_present, dataset_reachable)
    if spec.paths.adapter_dir is not None:   # a classmate's adapter, the fallback of a failed training: found now
        try:
            found = checkpoints.resolve_checkpoint(spec)[0]
        except CourseError as err:
            checks.append(Check("adapter", False, str(err), "改正 adapter_dir 的路径" + checkpoints.ADAPTER_WAY_BACK))
        else:
            checks.append(Check("adapter", True, f"adapter_dir {display_path(found)}"))
    keyless = spec.swanlab.mode == "online" and not (has_swanlab_key(os.environ) if swanlab_key is None else swanlab_key)
    checks.append(Check("swanlab", not keyless, "模式 online，但没有 API key：训练会在开始前停下" if keyless else
                        f"模式 {spec.swanlab.mode}"
                        + ("" if spec.swanlab.mode == "online" else "（记录留在本机，之后可以 `swanlab sync` 上传）"),
                        "在终端里运行一次 `swanlab login`（或者设置 SWANLAB_API_KEY）；不联网上课：python -m "
                        "helpers.environment setup --swanlab-mode offline，并取消（或改成 offline）"
                        "QWEN3_TUTORIAL_SWANLAB_MODE"))
    problem = kernel_problem() if kernel is None else (None if kernel else "没有注册")
    checks.append(Check("kernel", problem is None, f"Jupyter 内核 {KERNEL_NAME!r} {problem or '已注册'}",
                        f"{repo_command('make kernel')}（然后在 JupyterLab 里选 “{KERNEL_DISPLAY}”：Kernel → Change Kernel）"))
    return [check if not check.ok else Check(check.name, True, check.detail) for check in checks]


def _gpu_check(spec, gpu_list: list[dict], gpu_profile: bool) -> Check:
    if not gpu_profile:
        return Check("gpu", True, f"{spec.profile.name} 档位不需要 GPU"
                     + (f"（找到 {len(gpu_list)} 块）" if gpu_list else ""))
    if not gpu_list:
        return Check("gpu", False, "没有找到 CUDA GPU",
                     "换一台有 GPU 的机器，或者用 tiny profile：python -m helpers.environment setup --profile tiny"
                     + and_unset("profile"))
    gpu = gpu_list[0]
    choice = choose(gpu["memory_gb"])
    held = gpu["memory_gb"] - gpu.get("free_gb", gpu["memory_gb"])
    ok = choice.recipe is not None and held < 2
    detail = (f"{gpu['name']} {gpu['memory_gb']} GB，bf16 {'支持' if gpu['bf16'] else '不支持（改用 fp16）'}"
              + (f"，已有 {held:.1f} GB 被占用" if held >= 2 else "") + f"；{choice.reason}")
    fix = "" if ok else ("之前的内核还占着显存：把它关掉（nvidia-smi 能看到它）"
                         if choice.recipe is not None else "换一块显存更大的卡")
    return Check("gpu", ok, detail, fix)


def _files_checks(spec, model_present: bool, dataset_reachable) -> list[Check]:
    out = []
    has_config = (spec.paths.model_dir / "config.json").is_file()
    differs = other_model(spec) if has_config else None
    if model_present and differs is None:
        out.append(Check("model", True, f"已在 {display_path(spec.paths.model_dir)}"))
    elif "model_dir" in spec.given and spec.profile.source == "modelscope":
        out.append(Check("model", False, f"{display_path(spec.paths.model_dir)}（来自 {spec.origin['model_dir']}）"
                         + (f"不是 {spec.profile.model}：{differs}" if differs else
                            "里的 *.safetensors 权重不全" if has_config else
                            "是文件，不是文件夹" if spec.paths.model_dir.is_file() else "里没有 config.json"),
                         f"把 model_dir 指向存有 {spec.profile.model} 的文件夹，或者取消这个设置、由课程下载："
                         "python -m helpers.environment setup --model-dir \"\"" + and_unset("model_dir")))
    elif spec.profile.source == "modelscope":
        out.append(Check("model", False, f"不是 {spec.profile.model}：{differs}" if differs else
                         f"{'下载没有完成，权重不全' if has_config else '还没有下载'}（{display_path(spec.paths.model_dir)}）",
                         (f"删掉 {display_path(spec.paths.model_dir)}，然后 " if differs else "")
                         + f"python -m helpers.download --profile {spec.profile.name}   "
                         f"（{weights_gb(spec.profile.model)} GB，请在上课前下载）"))
    else:
        out.append(Check("model", True, "第一次使用时在本机构建（不需要下载）"))
    dataset = spec.paths.dataset
    if dataset.is_file():
        out.append(Check("dataset", True, f"已在 {display_path(dataset)}"))
    elif "dataset" in spec.given:  # a file the user named: a download would not put it there
        what = "是文件夹，不是数据文件" if dataset.is_dir() else "不存在"
        variable = SETTINGS_KEYS["dataset"]
        fix = f"改正环境变量 {variable}（最好写绝对路径），或者 `unset {variable}` 后用 " \
            if overriding_variable("dataset") and spec.data.source == "course" else "改正路径："   # not a config's file
        out.append(Check("dataset", False, f"{display_path(dataset)} {what}（{spec.origin['dataset']}）",
                         fix + "python -m helpers.environment setup --dataset /path/to/huanhuan.json"))
    else:
        online = dataset_reachable() if dataset_reachable is not None else \
            reachable((urlsplit(HUANHUAN_PINNED_URL).hostname, 443))
        out.append(Check("dataset", online, f"还没有下载；{'可以下载' if online else '网络不通，无法下载'}",
                               "把 huanhuan.json（0.9 MB）拷到这台机器上，然后：python -m helpers.environment "
                               "setup --dataset /path/to/huanhuan.json"))
    return out


def format_checks(checks: list[Check]) -> str:
    lines = []
    for check in checks:
        lines.append(f"[{'通过 PASS' if check.ok else '失败 FAIL'}] {check.name:<9} {check.detail}")
        if not check.ok and check.fix:
            lines.append(f"       修复 fix: {check.fix}")
    failed = sum(not c.ok for c in checks)
    lines.append("全部通过 (all checks passed)" if not failed else f"{failed} 项未通过 ({failed} check(s) failed)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def _setup(args) -> int:
    """``setup``: write the settings file, then say what of it is not there yet or is overridden."""
    values = {k: getattr(args, k) for k in SETTINGS_KEYS if getattr(args, k) is not None}
    for key in PATH_KEYS:
        if values.get(key) and not values[key].startswith("~"):
            values[key] = str(named_path(values[key]))  # as typed where the command ran
    blocked = blocking_file(values["workspace"]) if values.get("workspace") else None
    if blocked is not None:
        raise SpecError(f"--workspace：{display_path(blocked)} 是文件，不是文件夹：工作目录要放模型、数据和检查点。"
                        "请给一个文件夹（还不存在也可以，第一次使用时创建）。没有写入设置。")
    path = write_settings(values)
    print(f"已写入 {display_path(path)}：")
    print(path.read_text(encoding="utf-8"))
    for key in values:   # the environment beats the settings file: say so, or the setup seems not to work
        if overriding_variable(key):
            print(f"注意：环境变量 {SETTINGS_KEYS[key]} 也设置了 {key}，它优先于设置文件："
                  f"要让这次的设置生效，先 `unset {SETTINGS_KEYS[key]}`。")
    for key in ("model_dir", "dataset", "adapter_dir"):   # written all the same: it may be copied there later
        named, folder = (expand_home(values[key]) if values.get(key) else None), key != "dataset"
        if named is None or (named.exists() and named.is_dir() == folder):   # a data file, or a folder
            continue
        if not named.exists():
            print(f"注意：{key} 指向的 {display_path(named)} 还不存在。之后把它放到那里，或者改正路径再运行一次 setup。")
        else:   # something else is there: only another path helps
            what = "是文件，不是文件夹" if folder else "是文件夹，不是数据文件（请指向其中的 .json 或 .jsonl 文件）"
            print(f"注意：{key} 指向的 {display_path(named)} {what}：请改正路径，再运行一次 setup。")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m helpers.environment",
                                     description="课程设置和课前检查。")
    parser.add_argument("--debug", action="store_true", help="显示完整的 traceback")
    commands = parser.add_subparsers(dest="command", required=True)
    setup = commands.add_parser("setup", help="写入 course-settings.yaml（每个内核和命令都读它）")
    for key in SETTINGS_KEYS:
        setup.add_argument(f"--{key.replace('_', '-')}", dest=key, help=f"{key}（传空字符串即删除这一项）")
    kernel = commands.add_parser("kernel", help=f"把这个 Python 注册为 Jupyter 内核 {KERNEL_NAME!r}（make kernel）")
    check = commands.add_parser("check", help="逐项检查通过 / 未通过，未通过的附修复方法")
    check.add_argument("--json", action="store_true", help="输出 JSON（便于收集整个教室的结果）")
    check.add_argument("--profile", help="按这个 profile 检查，而不是设置里的那个")
    for command in (setup, kernel, check):   # --debug also after the command, where the error hint suggests it
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="显示完整的 traceback")
    args = parser.parse_args(argv)

    def work() -> int:
        if args.command == "setup":
            return _setup(args)
        if args.command == "kernel":
            from ipykernel.kernelspec import install

            # the user's Jupyter folder (~/.local/share/jupyter/kernels): a JupyterLab started by the
            # platform (AutoDL) finds it there too
            folder = install(user=True, kernel_name=KERNEL_NAME, display_name=KERNEL_DISPLAY)
            print(f"已把 Jupyter 内核 {KERNEL_NAME!r}（{sys.executable}）注册到 {display_path(folder)}")
            print(f"在 JupyterLab 里选 “{KERNEL_DISPLAY}”：Kernel → Change Kernel（列表里没有就刷新页面）。")
            return 0
        try:
            spec = build_spec(profile=args.profile)
        except CourseError as err:
            if args.json:   # a room's collector still gets one JSON object per machine
                print(json.dumps({"host": platform.node(), "profile": args.profile, "ok": False,
                                  "error": " ".join(str(err).split()), "checks": []}, ensure_ascii=False, indent=1))
            raise
        checks = preflight(spec)
        if args.json:
            print(json.dumps({"host": platform.node(), "profile": spec.profile.name,
                              "ok": all(c.ok for c in checks),
                              "checks": [asdict(c) for c in checks]}, ensure_ascii=False, indent=1))
        else:
            print(spec.describe())
            print(format_checks(checks))
        return 0 if all(c.ok for c in checks) else 1

    return run_cli(work, debug=args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
