"""Where the course keeps its artifacts.

Everything a notebook produces (model directories, processed data, checkpoints,
SwanLab records, plots) lives under one workspace directory, ``./workspace`` at
the repository root unless ``QWEN3_TUTORIAL_WORKSPACE`` points elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

WORKSPACE_ENV = "QWEN3_TUTORIAL_WORKSPACE"

#: The repository root (the folder that holds ``helpers/``).
REPO_ROOT = Path(__file__).resolve().parent.parent


class MissingArtifactError(FileNotFoundError):
    """An artifact that an earlier notebook makes is not there yet."""


def workspace_dir(create: bool = True) -> Path:
    """Return the workspace directory (created on first use)."""
    configured = os.environ.get(WORKSPACE_ENV)
    path = Path(configured).expanduser() if configured else REPO_ROOT / "workspace"
    path = path.resolve()
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def workspace_path(*parts: str, create_parent: bool = False) -> Path:
    """A path inside the workspace, e.g. ``workspace_path("models", "tiny")``."""
    path = workspace_dir().joinpath(*parts)
    if create_parent:
        path.parent.mkdir(parents=True, exist_ok=True)
    return path


def display_path(path: str | os.PathLike) -> str:
    """Show a path without the machine-specific prefix.

    Paths inside the workspace print as ``workspace/...`` and paths inside the
    repository relative to it, so notebook outputs never carry a user's home
    directory. Anything else prints as its file name only, prefixed by ``.../``.
    """
    path = Path(path).resolve()
    for base, label in ((workspace_dir(create=False), "workspace"), (REPO_ROOT, "")):
        try:
            rel = path.relative_to(base)
        except ValueError:
            continue
        text = rel.as_posix()
        if label:
            return label if text == "." else f"{label}/{text}"
        return text or "."
    return f".../{path.name}"


def require_artifact(path: str | os.PathLike, made_by: str, what: str = "") -> Path:
    """Return ``path`` if it exists, else explain which notebook makes it.

    ``made_by`` names the notebook (e.g. ``"01-download.ipynb"``) so the error
    tells the learner exactly what to run first.
    """
    path = Path(path)
    if path.exists():
        return path
    thing = what or path.name
    raise MissingArtifactError(
        f"{thing} not found at {display_path(path)}. "
        f"Run notebooks/{made_by} first (it creates this file), then re-run this cell."
    )
