"""Notebook 04: LoRA training with the Trainer, tracked by SwanLab, crash-safe."""

from __future__ import annotations

import re
from pathlib import Path

from .profiles import Profile, resolve_profile
from .workspace import workspace_path

#: Written into a checkpoint folder once the Trainer has finished saving it.
COMPLETE_MARKER = "checkpoint_complete"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def run_dir(profile: Profile | str | None = None) -> Path:
    """Where a profile's training run writes its checkpoints: ``workspace/checkpoints/<profile>``."""
    profile = resolve_profile(profile) if not isinstance(profile, Profile) else profile
    return workspace_path("checkpoints", profile.name)


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
