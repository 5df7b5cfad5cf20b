"""Notebook 00: what this machine has, and what the course will do on it."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil

from .profiles import PROFILE_ENV, explain_profile, resolve_profile
from .workspace import WORKSPACE_ENV, display_path, workspace_dir

#: Packages whose versions matter for the course (what requirements.txt pins).
KEY_PACKAGES = [
    "torch", "transformers", "peft", "accelerate", "datasets", "modelscope",
    "swanlab", "jupyterlab", "ipywidgets", "nbval",
]

#: Mirror settings for AutoDL / mainland-China machines (printed, never applied silently).
MIRROR_COMMANDS = {
    "pip": "pip config set global.index-url https://mirrors.aliyun.com/pypi/simple/",
    "AutoDL academic network acceleration (GitHub, Hugging Face)": "source /etc/network_turbo",
    "ModelScope cache on the data disk": "export MODELSCOPE_CACHE=~/autodl-tmp/modelscope",
    "course workspace on the data disk": f"export {WORKSPACE_ENV}=~/autodl-tmp/qwen3-workspace",
}


def package_versions(names=None) -> dict[str, str]:
    """Installed version of each package, or 'not installed'."""
    out = {"python": platform.python_version()}
    for name in names or KEY_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def memory_gb() -> tuple[float, float]:
    """(total, available) system memory in GB."""
    import psutil

    vm = psutil.virtual_memory()
    return vm.total / 1e9, vm.available / 1e9


def gpus() -> list[dict]:
    """Name, memory (GB) and bf16 support of each CUDA GPU."""
    import torch

    found = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            found.append({
                "index": index,
                "name": props.name,
                "memory_gb": round(props.total_memory / 1e9, 1),
                "capability": f"{props.major}.{props.minor}",
                "bf16": props.major >= 8,
            })
    return found


def hardware_summary() -> dict:
    total, available = memory_gb()
    found = gpus()
    return {
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu_cores": os.cpu_count(),
        "memory_total_gb": round(total, 1),
        "memory_available_gb": round(available, 1),
        "gpus": found,
        "workspace": display_path(workspace_dir()),
        "workspace_free_gb": round(shutil.disk_usage(workspace_dir()).free / 1e9, 1),
    }


def swanlab_plan() -> str:
    """How notebook 04 will run SwanLab here: never an interactive prompt."""
    if os.environ.get("SWANLAB_API_KEY"):
        return "online: SWANLAB_API_KEY is set, runs upload to swanlab.cn (no prompt)"
    return (
        "offline: no SWANLAB_API_KEY, runs are written to workspace/swanlog and can be "
        "uploaded later with `swanlab sync` (no prompt, no account needed)"
    )


def profile_report() -> str:
    profile = resolve_profile()
    lines = [explain_profile(), f"  switch with: export {PROFILE_ENV}=full|tiny|random8b|auto"]
    if profile.needs_gpu and not gpus():
        lines.append("  WARNING: the full profile needs a CUDA GPU, and none was found.")
    return "\n".join(lines)


def report_table(rows: dict) -> str:
    width = max(len(str(k)) for k in rows)
    return "\n".join(f"{str(k):<{width}}  {v}" for k, v in rows.items())
