"""Start the course again without downloading the 16 GB model again (``make reset`` / ``make reset-all``).

``python -m helpers.reset`` removes what the course made in the workspace and can make again:
training runs and their checkpoints, merged exports, plots, SwanLab records, the encoded data and
its split, notebook 06's scale-out demo and the executed notebooks. The downloaded model
(``models/``) and dataset (``data/huanhuan.json``) stay.

``--all`` also removes ``models/`` and the downloaded dataset. It asks first; where nobody can answer
(no terminal on stdin: CI, a script, a Makefile under a pipe) it needs ``--force`` and never waits.

Only the names listed here are removed, never "everything else in the workspace": a workspace
pointed at a whole data disk must not lose anything the course did not make. A run that is being
trained into (its run lock is held) stops the reset before anything is removed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .checkpoints import LOCK_FILE
from .errors import CourseError, run_cli
from .profiles import PROFILES
from .settings import course_settings
from .spec import resolve_paths
from .workspace import display_path

#: folders under the workspace that the course makes and can make again
DERIVED_FOLDERS = ("checkpoints", "export", "plots", "swanlog", "scale-out-demo", "executed")
#: files and folders under ``<workspace>/data`` that are made from the dataset (glob patterns)
DERIVED_DATA = ("train-*.jsonl", "split-*", "*.partial")


class ResetRefused(CourseError, RuntimeError):
    """The reset cannot go ahead (a run is training, or --all was not confirmed)."""


@dataclass(frozen=True)
class Item:
    path: Path
    bytes: int
    what: str


def size_of(path: Path) -> int:
    """Bytes in a file or folder (symbolic links count as nothing: what they point at stays)."""
    if path.is_symlink() or path.is_file():
        return 0 if path.is_symlink() else path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def human(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def plan(workspace: Path, *, everything: bool = False, executed: Path | None = None) -> list[Item]:
    """What a reset removes (only what exists), in the order it is removed."""
    workspace = Path(workspace)
    found: list[tuple[Path, str]] = []
    for name in DERIVED_FOLDERS:
        found.append((workspace / name, "executed notebooks" if name == "executed" else name))
    data = workspace / "data"
    if data.is_dir():
        for pattern in DERIVED_DATA:
            found += [(p, "encoded data") for p in sorted(data.glob(pattern))]
    if executed is not None:
        found += [(p, "executed notebooks") for p in sorted(Path(executed).glob("*.ipynb"))]
    if everything:
        found.append((workspace / "models", "models (downloaded / built)"))
        found.append((data / "huanhuan.json", "dataset (downloaded)"))
    seen, items = set(), []
    for path, what in found:
        key = path.parent.resolve() / path.name  # the link itself, not what it points at
        if key in seen or not (path.exists() or path.is_symlink()):
            continue
        if any(parent in seen for parent in key.parents):
            continue
        seen.add(key)
        items.append(Item(path, size_of(path), what))
    return items


def running_trainings(workspace: Path) -> list[Path]:
    """Run folders whose run lock another process holds (a training in progress)."""
    from filelock import FileLock, Timeout


    busy = []
    for lock_path in sorted((Path(workspace) / "checkpoints").glob(f"*{LOCK_FILE}")):
        lock = FileLock(lock_path)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            busy.append(lock_path.with_name(lock_path.name[: -len(LOCK_FILE)]))
        else:
            lock.release()
    return busy


def remove(items: list[Item]) -> int:
    """Delete each item; returns the bytes freed."""
    freed = 0
    for item in items:
        if item.path.is_dir() and not item.path.is_symlink():
            shutil.rmtree(item.path)
        else:
            item.path.unlink()
        freed += item.bytes
    return freed


def confirm(question: str, force: bool, stdin=None) -> bool:
    """True with --force; else ask on a terminal; with no terminal refuse at once (never hang)."""
    if force:
        return True
    stdin = sys.stdin if stdin is None else stdin
    if not (stdin is not None and stdin.isatty()):
        raise ResetRefused("removing the model needs a yes, and there is no terminal to ask on: "
                           "run `make reset-all FORCE=1` (or `python -m helpers.reset --all --force`). "
                           "Nothing was removed.")
    answer = input(f"{question} [y/N] ").strip().lower()
    return answer in ("y", "yes", "是")


def reset(workspace: Path, *, everything: bool = False, force: bool = False, dry_run: bool = False,
          executed: Path | None = None, out=None) -> int:
    """List what goes, remove it (unless ``dry_run``) and report the space freed; returns the bytes freed."""
    out = sys.stdout if out is None else out
    workspace = Path(workspace)
    busy = running_trainings(workspace)
    if busy:
        raise ResetRefused(f"a training run is in progress in {', '.join(display_path(p) for p in busy)}: "
                           "stop it (or wait for it) first. Nothing was removed.")
    items = plan(workspace, everything=everything, executed=executed)
    print(f"workspace: {display_path(workspace)}", file=out)
    if not items:
        print("nothing to remove: the workspace holds no runs, exports or other derived files.", file=out)
        return 0
    total = sum(item.bytes for item in items)
    print(f"to remove ({human(total)}):", file=out)
    for item in items:
        print(f"  {display_path(item.path):<60} {human(item.bytes):>9}  ({item.what})", file=out)
    kept = [p for p in (workspace / "models", workspace / "data" / "huanhuan.json") if p.exists()]
    if dry_run:
        print(f"dry run: {human(total)} would be freed; nothing was removed.", file=out)
        return 0
    if everything and any(item.what.startswith("models") for item in items):
        models = next(item for item in items if item.what.startswith("models"))
        if not confirm(f"Remove the models too ({human(models.bytes)}; Qwen3-8B takes a 16.4 GB download to "
                       "get back)?", force):
            print("not confirmed: nothing was removed.", file=out)
            return 0
    freed = remove(items)
    print(f"freed {human(freed)}.", file=out)
    if not everything and kept:
        print("kept: " + ", ".join(f"{display_path(p)} ({human(size_of(p))})" for p in kept), file=out)
    return freed


def main(argv: list[str] | None = None) -> int:

    parser = argparse.ArgumentParser(
        prog="python -m helpers.reset",
        description="Remove runs, checkpoints, exports, plots, SwanLab records, encoded data, the scale-out demo "
                    "and executed notebooks; keep the downloaded model and dataset (--all removes those too).")
    parser.add_argument("--all", action="store_true", dest="everything",
                        help="also remove the models and the downloaded dataset (asks first)")
    parser.add_argument("--force", action="store_true", help="do not ask (needed for --all without a terminal)")
    parser.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    parser.add_argument("--executed", help="another folder of executed notebooks (make run's EXECUTED)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)

    def work() -> int:
        # only the workspace matters here, and it is the same for every profile: the run spec's own rule,
        # without building a whole spec (that imports transformers)
        workspace = resolve_paths(PROFILES["tiny"], course_settings()).workspace
        reset(workspace, everything=args.everything, force=args.force, dry_run=args.dry_run,
              executed=Path(args.executed) if args.executed else None)
        return 0

    return run_cli(work, debug=args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
