"""What this machine has: the one place that asks PyTorch about GPUs and memory, and the network about a host."""

from __future__ import annotations

import os


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def gpus(only: int | None = None) -> list[dict]:
    """Each CUDA GPU (or GPU ``only``): index, name, total and free memory (GB = 1e9 bytes), capability, bf16
    support. Asking a GPU its free memory opens a CUDA context on it (hundreds of MB, for the process's life)."""
    import torch

    found = []
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        for index in range(count) if only is None else [min(only, count - 1)]:
            props = torch.cuda.get_device_properties(index)
            free, total = torch.cuda.mem_get_info(index)
            found.append({
                "index": index,
                "name": props.name,
                "memory_gb": round(total / 1e9, 1),
                "free_gb": round(free / 1e9, 1),
                "capability": f"{props.major}.{props.minor}",
                "bf16": props.major >= 8,
            })
    return found


def free_gpu_gb() -> float | None:
    """Free memory (GB) of this process's GPU (``LOCAL_RANK``, 0 for a plain run), None without CUDA. Asks that one
    GPU only: asking every GPU opens a CUDA context (hundreds of MB) on each, in every process of a launch."""
    import torch

    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.mem_get_info(local_gpu())[0] / 1e9, 1)


def local_gpu() -> int:
    """The GPU this process trains on: ``LOCAL_RANK`` under ``accelerate launch`` / ``torchrun``, else 0."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def peak_memory_gib() -> float:
    """Peak GPU memory allocated by PyTorch so far (GiB), or this process's resident memory on CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import psutil

    return psutil.Process().memory_info().rss / 2**30


def memory_gb() -> tuple[float, float]:
    """(total, available) system memory in GB."""
    import psutil

    vm = psutil.virtual_memory()
    return vm.total / 1e9, vm.available / 1e9


def launched_processes() -> int:
    """How many processes ``accelerate launch`` / ``torchrun`` started (``WORLD_SIZE``); 1 for a plain run."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 of a launch (or a plain run): the one process that prints, plots and tracks."""
    return int(os.environ.get("RANK", "0")) == 0


def reachable(host: tuple[str, int], timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``(name, port)`` opens (is this machine online for that host?)."""
    import socket

    try:
        with socket.create_connection(host, timeout=timeout):
            return True
    except OSError:
        return False


def liger_installed() -> bool:
    """Whether Liger Kernel (pyproject's ``gpu`` extra) is installed here."""
    import importlib.util

    return importlib.util.find_spec("liger_kernel") is not None
