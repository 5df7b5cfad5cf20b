"""Paths and files: what the course prints, how it writes, and how it says that something is missing.

Where the workspace is (``./workspace`` unless relocated) is decided once by the run spec
(:mod:`helpers.spec`); this module only knows the repository root. Every file the course writes
goes to a temporary name in the same folder first and is renamed on success
(:func:`atomic_path`, :func:`atomic_folder`), so a failure, a full disk included, never leaves a
half-written file or replaces a good one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .errors import CourseError

#: The repository root (the folder that holds ``helpers/``).
REPO_ROOT = Path(__file__).resolve().parent.parent


class MissingArtifactError(CourseError, FileNotFoundError):
    """An artifact that an earlier step makes is not there yet."""


class UnsafeWriteError(CourseError, ValueError):
    """A write would destroy a file the command does not own (e.g. OUT is IN)."""


class DiskFullError(CourseError, OSError):
    """The disk filled up during a write; nothing half-written was left behind."""

    def __str__(self) -> str:
        return self.strerror


class NotEnoughDiskError(CourseError, RuntimeError):
    """The disk cannot hold what is about to be written."""


# --------------------------------------------------------------------------- printed and shared paths


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


def shareable_path(path: str | os.PathLike | None, *bases: str | os.PathLike) -> str | None:
    """A path for files that leave this machine: relative to the first of ``bases`` that holds it, else its name."""
    if path is None:
        return None
    path = Path(path).resolve()
    for base in bases:
        try:
            return path.relative_to(Path(base).resolve()).as_posix()
        except ValueError:
            continue
    return path.name


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


# --------------------------------------------------------------------------- files


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _umask_mode(mode: int = 0o666) -> int:
    current = os.umask(0)
    os.umask(current)
    return mode & ~current


def _disk_full(err: OSError, path: Path) -> DiskFullError:
    return DiskFullError(err.errno, f"the disk is full: {display_path(path)} was not written (the partial "
                         f"copy was removed{', the old one is unchanged' if path.exists() else ''}). "
                         "Free some space and run it again.")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary file beside ``path``; rename it over ``path`` on success, remove it on failure.

    The file gets the user's normal mode (umask), not the 0600 of a temporary file.
    """
    path = Path(path)
    if path.is_dir():
        raise UnsafeWriteError(f"{display_path(path)} is a folder: give a file name to write to.")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        os.chmod(temporary, _umask_mode())
        os.replace(temporary, path)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT) or isinstance(err, DiskFullError):
            raise
        raise _disk_full(err, path) from err
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike):
    """Yield ``<path>.partial`` (emptied first); it replaces ``path`` on success, is removed on failure."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
        if path.exists():
            shutil.rmtree(path)
        partial.rename(path)  # appears complete or not at all
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT) or isinstance(err, DiskFullError):
            raise
        raise _disk_full(err, path) from err
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def refuse_same_file(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Stop when writing ``target`` would overwrite ``source`` (the same file, links included)."""
    source, target = Path(source), Path(target)
    same = source.exists() and target.exists() and os.path.samefile(source, target)
    if same or source.resolve() == target.resolve():
        raise UnsafeWriteError(f"the output {target} is the input file itself: it would be overwritten. "
                               "Write to another file, e.g. workspace/data/train.jsonl.")


# --------------------------------------------------------------------------- disk


def free_disk_gb(path: str | os.PathLike) -> float:
    """Free space, in GB (10^9 bytes), on the disk holding ``path`` (its nearest existing parent)."""
    path = Path(path)
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free / 1e9


def check_disk_space(need_gb: float, path: str | os.PathLike) -> float:
    """Raise :class:`NotEnoughDiskError` with a fix when less than ``need_gb`` is free."""
    free = free_disk_gb(path)
    if free < need_gb:
        raise NotEnoughDiskError(
            f"Only {free:.1f} GB free where the workspace lives ({display_path(path)}), but {need_gb:.1f} GB "
            "are needed (model, checkpoints and the merged export). On AutoDL put the workspace on the data "
            "disk: python -m helpers.environment setup --workspace ~/autodl-tmp/qwen3-workspace"
        )
    return free
