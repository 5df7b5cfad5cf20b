"""Course profiles: which model the very same notebook code drives.

``QWEN3_TUTORIAL_PROFILE`` selects one of:

* ``full``     - the real Qwen/Qwen3-8B from ModelScope, bf16, ``device_map="auto"`` (GPU).
* ``tiny``     - the real Qwen3 tokenizer and chat template (offline) plus a tiny,
                 randomly initialised Qwen3 saved as a normal model directory (CPU).
* ``random8b`` - the real Qwen3-8B architecture with random bf16 weights on whatever
                 device is present: for GPU smoke tests and benchmarks where the
                 weights cannot be downloaded (throughput does not depend on values).
* ``auto``     - (default) ``full`` when CUDA is available, else ``tiny``.

Adding a profile means adding one :class:`Profile` entry to :data:`PROFILES`.
Every profile ends up as a model directory with ``config.json`` and the tokenizer,
so later notebooks load it the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PROFILE_ENV = "QWEN3_TUTORIAL_PROFILE"


@dataclass(frozen=True)
class Profile:
    """What one profile uses: model source, precision, data and training sizes."""

    name: str
    description: str
    #: folder name of the model directory under ``workspace/models``
    model_dirname: str
    #: ``"modelscope"`` (download), ``"tiny"`` (build a tiny model) or ``"config-only"``
    #: (write the Qwen3-8B config; weights are drawn at random when loaded)
    source: str
    #: ``"pretrained"`` (load weights from the directory) or ``"random"``
    weights: str
    dtype: str
    device_map: str | None
    #: ``"huanhuan"`` (the real 3,729-row set, downloaded) or ``"sample"`` (shipped)
    dataset: str
    #: the training config (``configs/train/<name>.yaml``) whose numbers this profile uses
    train_config: str = "qwen3-8b"

    @property
    def needs_gpu(self) -> bool:
        return self.source == "modelscope"


PROFILES: dict[str, Profile] = {
    "full": Profile(
        name="full",
        description="Qwen/Qwen3-8B from ModelScope, bf16, device_map='auto' (needs a GPU with ~24 GB)",
        model_dirname="Qwen3-8B",
        source="modelscope",
        weights="pretrained",
        dtype="bfloat16",
        device_map="auto",
        dataset="huanhuan",
        train_config="qwen3-8b",
    ),
    "tiny": Profile(
        name="tiny",
        description="real Qwen3 tokenizer + tiny random Qwen3 (CPU, offline, minutes)",
        model_dirname="tiny-qwen3",
        source="tiny",
        weights="pretrained",
        dtype="float32",
        device_map=None,
        dataset="sample",
        train_config="tiny",
    ),
    "random8b": Profile(
        name="random8b",
        description="real Qwen3-8B architecture, random bf16 weights (GPU smoke tests and benchmarks)",
        model_dirname="Qwen3-8B-random",
        source="config-only",
        weights="random",
        dtype="bfloat16",
        device_map=None,
        dataset="huanhuan",
        train_config="qwen3-8b",
    ),
}


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a course requirement
        return False
    return torch.cuda.is_available()


def resolve_profile(name: str | None = None) -> Profile:
    """Return the profile named by ``name`` or by ``QWEN3_TUTORIAL_PROFILE``."""
    requested = (name or os.environ.get(PROFILE_ENV) or "auto").strip().lower()
    if requested == "auto":
        return PROFILES["full" if cuda_available() else "tiny"]
    try:
        return PROFILES[requested]
    except KeyError:
        choices = ", ".join([*PROFILES, "auto"])
        raise ValueError(
            f"Unknown profile {requested!r} in {PROFILE_ENV}. Choose one of: {choices}."
        ) from None


def explain_profile(name: str | None = None) -> str:
    """One banner line saying which profile is active and why."""
    requested = (name or os.environ.get(PROFILE_ENV) or "auto").strip().lower()
    profile = resolve_profile(requested)
    if requested == "auto":
        why = (
            "auto: CUDA GPU found" if profile.name == "full"
            else "auto: no CUDA GPU found, so the tiny CPU profile runs the same code"
        )
    else:
        why = f"set by {PROFILE_ENV}={requested}"
    banner = f"[profile: {profile.name}] {profile.description} ({why})"
    if profile.name == "tiny":
        banner += (
            "\n  Answers from the tiny model are NOT Qwen3-8B quality: it only proves the "
            "pipeline. Set QWEN3_TUTORIAL_PROFILE=full on a GPU box for the real model."
        )
    return banner
