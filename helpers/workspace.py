"""Paths the course prints, and how it says that something is missing.

Where the workspace is (``./workspace`` unless relocated) is decided once by the
run spec (:mod:`helpers.spec`); this module only knows the repository root.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: The repository root (the folder that holds ``helpers/``).
REPO_ROOT = Path(__file__).resolve().parent.parent


class MissingArtifactError(FileNotFoundError):
    """An artifact that an earlier step makes is not there yet."""


def display_path(path: str | os.PathLike | None) -> str:
    """A path as it can be pasted into a terminal at the repository root, with no machine prefix.

    Inside the repository: relative (``workspace/checkpoints/tiny``); under the home
    folder: ``~/...`` (``~/autodl-tmp/qwen3-workspace/...``); elsewhere the path itself.
    """
    if path is None:
        return "-"
    path = Path(path).expanduser().resolve()
    try:
        text = path.relative_to(REPO_ROOT).as_posix()
        return text or "."
    except ValueError:
        pass
    try:
        return "~/" + path.relative_to(Path.home().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def in_notebook() -> bool:
    """Whether this code runs inside a Jupyter kernel (messages then speak of cells).

    IPython's own answer: the active shell is the kernel's ``ZMQInteractiveShell``. (A shell script
    may import ``ipykernel`` through ipywidgets without being a kernel.)
    """
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def how_to_make(notebook: str, command: str) -> str:
    """The fix for a missing artifact, worded for where the user stands."""
    if in_notebook():
        return f"Run notebooks/{notebook} first (or in a terminal: `{command}`), then re-run this cell."
    return f"Make it with `{command}` (or run notebooks/{notebook})."


def require_artifact(path: str | os.PathLike, made_by: str, what: str = "", command: str = "") -> Path:
    """Return ``path`` if it exists, else explain which notebook (and which command) makes it."""
    path = Path(path)
    if path.exists():
        return path
    thing = what or path.name
    fix = how_to_make(made_by, command) if command else f"Run notebooks/{made_by} first (it creates this)."
    raise MissingArtifactError(f"{thing} not found at {display_path(path)}. {fix}")
