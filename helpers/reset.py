"""Start the course again without downloading the 16 GB model again (``make reset`` / ``make reset-all``).

``python -m helpers.reset`` removes what the course made and can make again (runs and checkpoints,
exports, plots, SwanLab records, encoded data and splits, the scale-out demo, executed notebooks); the
downloaded model and dataset stay. ``--all`` removes those too, after a yes: with no terminal to ask on
(CI, a script, make under a pipe) it needs ``--force`` and never waits.

Only what the course made goes: every folder it creates holds a ``.course-made`` marker (that also names
what it wrote into someone else's folder); anything else is listed as "not the course's, left alone", so
a workspace of ``~``, ``/`` or the repository loses nothing. A run being trained into (its run lock is
held) stops the reset before anything is removed.
"""

from __future__ import annotations

import fnmatch
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .checkpoints import LOCK_FILE
from .errors import ArgumentParser, CourseError, run_cli
from .profiles import PROFILES
from .settings import course_settings
from .spec import resolve_paths
from .workspace import CREATED, MADE_MARKER, WHOLE, display_path, listed, made_names

#: folders under the workspace where the course makes things it can make again
DERIVED_FOLDERS = ("checkpoints", "export", "plots", "swanlog", "scale-out-demo", "solutions", "executed")
#: what under ``<workspace>/data`` is made from the dataset (glob patterns), or by notebook 03; the rest is downloaded
DERIVED_DATA = ("train*.jsonl", "split*", ".split-*", "broken-demo.jsonl")


class ResetRefused(CourseError, RuntimeError):
    """The reset cannot go ahead (a run is training, or --all was not confirmed)."""


@dataclass(frozen=True)
class Item:
    path: Path
    bytes: int
    what: str


class Plan(list):
    """The items a reset removes, in order; ``left_alone``: what is there but not the course's."""

    def __init__(self, items=(), left_alone=()):
        super().__init__(items)
        self.left_alone: list[Path] = list(left_alone)


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


def sweep(folder: Path, depth: int = 0) -> tuple[list[Path], list[Path]]:
    """(what in ``folder`` the course made, what it did not): by the markers, never by name."""
    names = made_names(folder)
    if names is not None and WHOLE in names:
        return [folder], []
    mine, others = [], []
    for child in sorted(folder.iterdir()):
        if child.name == MADE_MARKER:
            continue
        if names is not None and listed(names, child.name):
            mine.append(child)
        elif child.is_dir() and not child.is_symlink() and made_names(child) is not None and depth < 8:
            found, foreign = sweep(child, depth + 1)
            mine, others = mine + found, others + foreign
        else:
            others.append(child)
    if names is not None and CREATED in names and not others:
        return [folder], []      # a folder the course made that holds only what the course made
    return mine, others


def _derived_data(name: str) -> bool:
    """Whether a name in ``<workspace>/data`` is made from the dataset (the rest there is downloaded)."""
    return any(fnmatch.fnmatch(name, pattern) for pattern in DERIVED_DATA)


def _downloaded(path: Path, workspace: Path) -> bool:
    """Whether ``path`` is what only --all removes: the model (downloaded or built) or the downloaded dataset."""
    return (workspace / "models" in (path, *path.parents)
            or (path.parent == workspace / "data" and not _derived_data(path.name)))


def _data_items(data: Path, everything: bool) -> tuple[list[Path], list[Path]]:
    """The encoded data and splits (and with --all the downloaded dataset) the course made in ``data``."""
    names = made_names(data) or set()
    mine, others = [], []
    for child in sorted(data.iterdir()):
        if child.name == MADE_MARKER:
            continue
        if listed(names, child.name):
            found, foreign = [child], []
        elif child.is_dir() and not child.is_symlink() and made_names(child) is not None:
            found, foreign = sweep(child)   # a split folder: what its marker names (a learner's note in it stays)
        else:
            found, foreign = [], [child]
        others += foreign
        if everything or _derived_data(child.name):
            mine += found
    return mine, others


def _what(path: Path, workspace: Path) -> str:
    try:
        top = path.relative_to(workspace).parts[0]
    except ValueError:
        return "执行过的 notebook"
    if top == "data":
        return "编码后的数据" if _derived_data(path.name) else "数据集（下载的）"
    return {"executed": "执行过的 notebook", "models": "模型（下载或构建的）"}.get(top, top)


def plan(workspace: Path, *, everything: bool = False, executed: Path | None = None) -> Plan:
    """What a reset removes (only what the course made and exists), in order, and what it leaves alone."""
    workspace = Path(workspace)
    folders = [workspace / name for name in DERIVED_FOLDERS + (("models",) if everything else ())]
    if executed is not None:
        folders.append(Path(executed))
    mine, others = [], []
    for folder in folders:
        if folder.is_dir() and not folder.is_symlink():
            found, foreign = sweep(folder)
            mine, others = mine + found, others + foreign
        elif folder.exists() or folder.is_symlink():
            others.append(folder)
    if (workspace / "data").is_dir():
        found, foreign = _data_items(workspace / "data", everything)
        mine, others = mine + found, others + foreign
    seen, items = set(), []
    for path in mine:
        key = path.parent.resolve() / path.name  # the link itself, not what it points at
        if key in seen or any(parent in seen for parent in key.parents):
            continue
        seen.add(key)
        items.append(Item(path, size_of(path), _what(path, workspace)))
    return Plan(items, list(dict.fromkeys(others)))


def _held(lock_path: Path) -> bool:
    """Whether another process holds this run lock: the same ``flock`` that filelock takes, without
    filelock itself (``make reset`` may run on the system python3, without the course's packages)."""
    import fcntl

    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def running_trainings(workspace: Path) -> list[Path]:
    """Run folders whose run lock another process holds (a training in progress), at any depth of the workspace
    (``--output-dir checkpoints/sweep/a``, the solutions' runs)."""
    return [lock_path.with_name(lock_path.name[: -len(LOCK_FILE)])
            for lock_path in sorted(Path(workspace).rglob(f"*{LOCK_FILE}"))
            if lock_path.is_file() and _held(lock_path)]


def remove(items: list[Item]) -> int:
    """Delete each item; returns the bytes freed."""
    freed = 0
    for item in items:
        if item.path.is_dir() and not item.path.is_symlink():
            shutil.rmtree(item.path)
        else:
            item.path.unlink()
        freed += item.bytes
        _prune_marker(item.path.parent)
    return freed


def _prune_marker(folder: Path) -> None:
    """Drop a marker that only named entries which are now gone (a learner's folder keeps nothing of ours)."""
    names = made_names(folder)
    if names is None or CREATED in names or WHOLE in names:
        return
    if not any((folder / name).exists() or (folder / name).is_symlink() for name in names):
        (folder / MADE_MARKER).unlink(missing_ok=True)


def confirm(question: str, force: bool) -> bool:
    """True with --force; else ask on a terminal; with no terminal refuse at once (never hang)."""
    if force:
        return True
    if not (sys.stdin is not None and sys.stdin.isatty()):
        raise ResetRefused("删除模型和数据集需要你确认，但这里没有终端可以询问："
                           "请运行 `make reset-all FORCE=1`（或 `python -m helpers.reset --all --force`）。"
                           "什么都没有删除。")
    try:
        answer = input(f"{question} [y/N] ").strip().lower()
    except EOFError:   # Ctrl-D: no answer is a no
        print()
        return False
    return answer in ("y", "yes", "是")


def reset(workspace: Path, *, everything: bool = False, force: bool = False, dry_run: bool = False,
          executed: Path | None = None, out=None) -> int:
    """List what goes, remove it (unless ``dry_run``) and report the space freed; returns the bytes freed."""
    out = sys.stdout if out is None else out
    workspace = Path(workspace)
    busy = running_trainings(workspace)
    if busy:
        raise ResetRefused(f"{'、'.join(display_path(p) for p in busy)} 里正在训练："
                           "请先停止训练（或等它结束）。什么都没有删除。")
    items = plan(workspace, everything=everything, executed=executed)
    print(f"工作目录：{display_path(workspace)}", file=out)
    if items.left_alone:
        shown = items.left_alone[:20]
        print(f"不是课程生成的，保持不动（{len(items.left_alone)} 项）：", file=out)
        for path in shown:
            print(f"  {_shown(path)}", file=out)
        if len(items.left_alone) > len(shown):
            print(f"  ……还有 {len(items.left_alone) - len(shown)} 项", file=out)
    if not items:
        print("没有要删除的东西：工作目录里没有课程生成的运行、导出或其他文件。", file=out)
        return 0
    total = sum(item.bytes for item in items)
    print(f"将删除（{human(total)}）：", file=out)
    for item in items:
        print(f"  {_shown(item.path):<60} {human(item.bytes):>9}  （{item.what}）", file=out)
    kept = [p for p in (workspace / "models", workspace / "data" / "huanhuan.json") if p.exists()]
    if dry_run:
        print(f"演练（dry run）：会释放 {human(total)}；什么都没有删除。", file=out)
        return 0
    downloaded = [item for item in items if _downloaded(item.path, workspace)]
    if everything and downloaded:
        what = "和".join(dict.fromkeys(item.what for item in downloaded))   # 模型（下载或构建的）, 数据集（下载的）
        if not confirm(f"也删除{what}吗（{human(sum(d.bytes for d in downloaded))}；删掉后要重新下载或构建才能找回）？",
                       force):
            print("没有确认：什么都没有删除。", file=out)
            return 0
    freed = remove(items)
    print(f"已释放 {human(freed)}。", file=out)
    if not everything and kept:
        print("保留：" + "，".join(f"{display_path(p)}（{human(size_of(p))}）" for p in kept), file=out)
    return freed


def _shown(path: Path) -> str:
    """A path as the list shows it: a link is the link itself, not the folder it points at (which may be elsewhere,
    or the very checkpoint this reset deletes)."""
    return f"{display_path(path.parent)}/{path.name}" if path.is_symlink() else display_path(path)


def switch(name: str, value: str | None) -> bool:
    """A make variable's yes/no word (DRY_RUN=true, FORCE=yes, ...); any other word is refused."""
    word = (value or "").strip().lower()
    if word in ("1", "true", "yes", "on", "y"):
        return True
    if word in ("", "0", "false", "no", "off", "n"):
        return False
    raise ResetRefused(f"{name}={value!r} 既不表示“是”也不表示“否”：请用 {name}=1（或 true/yes/on），或者不写它。"
                       "什么都没有删除。")


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m helpers.reset",
        description="删除运行、检查点、导出、图表、SwanLab 记录、编码后的数据、多卡演示和执行过的 notebook；"
                    "保留下载的模型和数据集（--all 连它们也删除）。")
    parser.add_argument("--all", action="store_true", dest="everything",
                        help="也删除模型和下载的数据集（会先询问）")
    parser.add_argument("--force", action="store_true", help="不询问（没有终端时 --all 需要它）")
    parser.add_argument("--dry-run", action="store_true", help="只列出会删除什么")
    parser.add_argument("--dry-run-value", metavar="WORD", help="make 的 DRY_RUN：true/yes/1/on 或 false/no/0/off")
    parser.add_argument("--force-value", metavar="WORD", help="make 的 FORCE：true/yes/1/on 或 false/no/0/off")
    parser.add_argument("--executed", help="另一个放执行过的 notebook 的文件夹（make run 的 EXECUTED）")
    parser.add_argument("--print-executed", action="store_true",
                        help="只打印 make run 把执行过的 notebook 放在哪里（<workspace>/executed）")
    parser.add_argument("--debug", action="store_true", help="显示完整的 traceback")
    args = parser.parse_args(argv)

    def work() -> int:
        # only the workspace matters here, and it is the same for every profile: the run spec's own rule,
        # without building a whole spec (that imports transformers)
        workspace = resolve_paths(PROFILES["tiny"], course_settings()).workspace
        if args.print_executed:
            print(workspace / "executed")
            return 0
        dry_run = args.dry_run or switch("DRY_RUN", args.dry_run_value)
        force = args.force or switch("FORCE", args.force_value)
        if args.executed and not Path(args.executed).exists():   # a typo in make's EXECUTED=: say so
            print(f"注意：--executed {args.executed} 不存在，那里没有要删除的东西", file=sys.stderr)
        reset(workspace, everything=args.everything, force=force, dry_run=dry_run,
              executed=Path(args.executed) if args.executed else None)
        return 0

    return run_cli(work, debug=args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
