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
import json
import os
import shlex
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


class HomeFolderError(CourseError, ValueError):
    """A path starting ``~name`` where no user ``name`` exists (``~autodl-tmp`` typed for ``~/autodl-tmp``)."""


def expand_home(path: str | os.PathLike) -> Path:
    """``path`` with a leading ``~`` (or ``~user``) expanded; one naming a user that does not exist is refused."""
    text = os.fspath(path)
    expanded = os.path.expanduser(text)
    if expanded == text and text.startswith("~"):
        user = text[1:].split("/")[0]
        raise HomeFolderError(f"{text}：没有叫 {user} 的用户，~{user} 不是家目录。家目录下的文件夹要写成 ~/{text[1:]}")
    return Path(expanded)


def repo_path(path: str | os.PathLike) -> Path:
    """A path a setting, a config or a function call names: relative ones start at the repository root, the same
    for every notebook (working directory ``notebooks/``) and every command."""
    path = expand_home(path)
    return path.resolve() if path.is_absolute() else (REPO_ROOT / path).resolve()


def named_path(path: str | os.PathLike) -> Path:
    """A file or folder a learner names (a config, a data file, a checkpoint, a path typed in a shell): absolute,
    relative to the working directory, or else, when only that exists, relative to the repository, where every path
    the course prints starts (so a printed path also works in a notebook and in a terminal elsewhere)."""
    path = expand_home(path)
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
        path = REPO_ROOT / path
    return path.resolve()


def typed_paths(parser, argv, *names: str, outputs: tuple[str, ...] = ()):
    """``parser``'s arguments, with its path arguments (attributes ``names``) as typed in a shell (:func:`named_path`),
    resolved once, at the edge: the functions below take relative paths from the repository (:func:`repo_path`).
    ``outputs``: files or folders to write, taken from the working directory (``~`` expanded). A path that
    cannot be one (``~nouser/x``) is refused like any other argument: one line, exit 2."""
    args = parser.parse_args(argv)
    for name in (*names, *outputs):
        if getattr(args, name, None):
            try:
                typed = getattr(args, name)
                setattr(args, name, named_path(typed) if name in names else str(expand_home(typed).absolute()))
            except CourseError as err:
                parser.error(str(err))
    return args


def display_path(path: str | os.PathLike | None) -> str:
    """A path as it can be pasted into a terminal at the repository root, with no machine prefix.

    Inside the repository: relative (``workspace/checkpoints/tiny``); under the home
    folder: ``~/...`` (``~/autodl-tmp/qwen3-workspace/...``); elsewhere the path itself.
    """
    if path is None:
        return "-"
    path = Path(os.path.expanduser(path))   # never raises: a ``~name`` of no user stays as typed
    try:
        path = path.resolve()
    except (OSError, RuntimeError):     # a symbolic-link loop
        path = path.absolute()
    for base, prefix in ((REPO_ROOT, ""), (Path.home().resolve(), "~/")):
        try:
            return prefix + path.relative_to(base).as_posix()
        except ValueError:
            continue
    return path.as_posix()


def shell_path(path: str | os.PathLike | None) -> str:
    """:func:`display_path` quoted as a shell needs it (spaces, Chinese, quotes); ``~/`` stays expandable."""
    text = display_path(path)
    if text.startswith("~/"):
        rest = text[2:]
        return "~/" + (shlex.quote(rest) if rest else "")
    return shlex.quote(text)


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


def away_from_repo() -> str | None:
    """``cd <repository>`` when a command runs in a terminal elsewhere (commands of other tools that name paths
    relative to the repository fail there when pasted), else None; a notebook's output holds no machine paths."""
    return None if in_notebook() or Path.cwd().resolve() == REPO_ROOT else f"cd {shlex.quote(str(REPO_ROOT))}"


def repo_command(command: str, *paths: str | os.PathLike) -> str:
    """Another tool's command with :func:`away_from_repo`'s ``cd`` first: a make target, or ``paths`` under the repo."""
    cd = away_from_repo()
    if cd is None or any(display_path(p).startswith(("/", "~")) for p in paths):
        return command
    return f"{cd} && {command}"


def how_to_make(notebook: str | None, command: str) -> str:
    """The fix for a missing artifact, worded for where the user stands; ``notebook`` None: no notebook makes
    this one (another run folder or config than the notebook's), only the command does."""
    if notebook is None:
        return f"请{'在终端里' if in_notebook() else ''}用 `{command}` 生成它。"
    if in_notebook():
        return f"请先运行 notebooks/{notebook}（或在终端里运行 `{command}`），再重新运行这个单元格。"
    return f"请用 `{command}` 生成它（或者运行 notebooks/{notebook}）。"


# --------------------------------------------------------------------------- files


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def safetensors_whole(path: str | os.PathLike) -> bool:
    """Whether a safetensors file is whole: its header parses and its last tensor ends where the file ends (a copy
    cut short, or a file of zeros, is not). Only the header is read."""
    try:
        with open(path, "rb") as file:
            size = int.from_bytes(file.read(8), "little")
            if not 2 <= size <= 100 * 2**20:
                return False
            header = json.loads(file.read(size))
        end = max((t["data_offsets"][1] for name, t in header.items() if name != "__metadata__"), default=0)
        return Path(path).stat().st_size == 8 + size + end
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return False


def _umask_mode() -> int:
    current = os.umask(0)
    os.umask(current)
    return 0o666 & ~current


def _raise_disk_full(err: Exception, path: Path):
    """Re-raise ``err``; a full disk as one :class:`DiskFullError` that says what was not written."""
    if isinstance(err, DiskFullError) or not is_disk_full(err):
        raise err
    raise DiskFullError(errno.ENOSPC, f"磁盘满了：{display_path(path)} 没有写入（写了一半的副本已删除"
                        f"{'，原来的文件没有变' if path.exists() else ''}）。请腾出一些空间后再运行一次。") from err


def _not_writable(err: OSError, folder: Path, path: Path):
    """Raise ``err`` met while writing ``path`` in ``folder`` as one line: a full disk, no rights, a read-only disk."""
    if is_disk_full(err):
        _raise_disk_full(err, path)
    raise UnsafeWriteError(f"{display_path(folder)} 不可写（{err.strerror or err}）：无法写入 {display_path(path)}。"
                           "请换一个有写权限的文件夹（或者修改它的权限）。") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary file beside ``path``; rename it over ``path`` on success, remove it on failure.

    The file gets the user's normal mode (umask), not the 0600 of a temporary file.
    """
    path = Path(path)
    if path.is_dir():
        raise UnsafeWriteError(f"{display_path(path)} 是文件夹：请给出要写入的文件名。")
    course_folder(path.parent, whole=False)
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except OSError as err:
        _not_writable(err, path.parent, path)
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        os.chmod(temporary, _umask_mode())
        os.replace(temporary, path)
    except Exception as err:
        _raise_disk_full(err, path)
    finally:
        temporary.unlink(missing_ok=True)


def is_disk_full(err: BaseException) -> bool:
    """ENOSPC / EDQUOT, also when a library (safetensors, ...) wraps it in its own error."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return "No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text


def _claim_partial(partial: Path, remove: bool = True) -> None:
    """Remove a leftover ``<path>.partial`` of the course's; refuse one the course did not make."""
    if not (partial.exists() or partial.is_symlink()):
        return
    if partial.is_dir() and not partial.is_symlink() and made_names(partial) is not None:
        if remove:
            shutil.rmtree(partial)
        return
    raise UnsafeWriteError(f"{display_path(partial)} 占着课程要用的位置，而且不是课程生成的：请把它移走（或者改名）"
                           "后再运行一次。没有写入任何文件。")


def refuse_foreign_partial(path: str | os.PathLike) -> None:
    """Stop before any work when ``<path>.partial`` exists and the course did not make it."""
    _claim_partial(Path(path).with_name(Path(path).name + ".partial"), remove=False)


def clear_course_files(folder: str | os.PathLike, legacy: tuple[str, ...]) -> None:
    """Remove what the course made in ``folder`` (its marker names it) and keep the rest.

    ``legacy``: name patterns that count as the course's in a folder written before it marked its folders, or that
    an older course marked whole (a learner's NOTES.md there is kept). Frees the room of an old output before its
    replacement is written (a 16 GB export, say).
    """
    import fnmatch

    folder = Path(folder)
    if not folder.is_dir():
        return
    names = made_names(folder)
    entries = [p for p in folder.iterdir() if p.name != MADE_MARKER]
    if names is None or WHOLE in names:
        names = {p.name for p in entries if any(fnmatch.fnmatch(p.name, pattern) for pattern in legacy)}
    ours = [p for p in entries if listed(names, p.name)]
    for entry in ours:
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    write_marker(folder, {CREATED})


def _foreign_entries(path: Path) -> list[Path]:
    """What in an existing ``path`` the course did not put there (it is carried over, never deleted)."""
    if not path.exists():
        return []
    if not path.is_dir() or path.is_symlink():
        raise UnsafeWriteError(f"{display_path(path)} 已存在，而且不是文件夹：请换一个目标。")
    names = made_names(path)
    entries = [p for p in path.iterdir() if p.name != MADE_MARKER]
    if names is None:
        if entries:
            raise UnsafeWriteError(f"{display_path(path)} 里有不是课程生成的文件"
                                   f"（{entries[0].name} 等）：请换一个目标，或者把它们移走。")
        return []
    return [p for p in entries if not listed(names, p.name)]


def refuse_working_folder(path: str | os.PathLike) -> Path:
    """``path`` made absolute (a link to a folder: the folder it points at, the link stays); stop when it is the
    working directory or holds it: an output folder is replaced whole, which would leave the shell (or notebook)
    standing in a deleted folder."""
    path, here = Path(os.path.abspath(path)), Path.cwd()
    if path.is_symlink() and path.is_dir():
        path = path.resolve()
    elif path.is_symlink() and not path.exists():
        raise UnsafeWriteError(f"{display_path(path.parent)}/{path.name} 是一个链接，指向的 {os.readlink(path)} 不存在："
                               "先创建那个文件夹，或者换一个输出文件夹。没有写入任何文件。")
    if path == here or path in here.parents:
        raise UnsafeWriteError(f"{display_path(path)} 是当前所在的文件夹{'' if path == here else '的上级'}，而输出文件夹会被整个替换："
                               f"请给一个新的子文件夹，例如 {shell_path(path / 'out')}。没有写入任何文件。")
    return path


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike):
    """Yield ``<path>.partial``; it replaces ``path`` on success, is removed on failure.

    The finished folder's marker names what the course wrote. A file the learner added to an
    earlier ``path`` (a NOTES.md beside an export) is carried into the new folder, never deleted;
    a ``.partial`` or a ``path`` full of files the course did not make stops it before anything is written.
    """
    path = refuse_working_folder(path)
    partial = path.with_name(path.name + ".partial")
    _claim_partial(partial)
    keep = _foreign_entries(path)
    course_folder(partial, whole=False)     # marked at once: a leftover is known to be the course's
    try:
        yield partial
        made = {p.name for p in partial.iterdir()} - {MADE_MARKER}
        clash = [p.name for p in keep if p.name in made]
        if clash:
            raise UnsafeWriteError(f"{display_path(path / clash[0])} 是你自己的文件，而新的输出里有同名文件："
                                   "请把它移走后再运行一次。没有替换任何文件。")
        for entry in keep:
            entry.rename(partial / entry.name)
        write_marker(partial, {CREATED} | made)
        if path.exists():
            shutil.rmtree(path)
        partial.rename(path)  # appears complete or not at all
    except Exception as err:
        for entry in keep:    # a learner's file never stays behind in a folder about to be removed
            if (partial / entry.name).exists() and not entry.exists():
                (partial / entry.name).rename(entry)
        _raise_disk_full(err, path)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def refuse_same_file(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Stop when writing ``target`` would overwrite ``source`` (the same file, links included)."""
    source, target = Path(source), Path(target)
    same = source.exists() and target.exists() and os.path.samefile(source, target)
    if same or source.resolve() == target.resolve():
        raise UnsafeWriteError(f"输出 {target} 就是输入文件本身：写入会覆盖它。"
                               f"请写到另一个文件，例如 {shell_path(target.with_name(target.stem + '-encoded.jsonl'))}。")


# --------------------------------------------------------------------------- disk


def nearest_existing(path: str | os.PathLike) -> Path:
    """``path``, or the nearest folder above it that exists (where a folder that is not there yet would go)."""
    probe = expand_home(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def free_disk_gb(path: str | os.PathLike) -> float:
    """Free space, in GB (10^9 bytes), on the disk holding ``path`` (its nearest existing parent)."""
    return shutil.disk_usage(nearest_existing(path)).free / 1e9


def check_disk_space(need_gb: float, path: str | os.PathLike, fix_tail: str = "") -> float:
    """Raise :class:`NotEnoughDiskError` with a fix (ending in ``fix_tail``) when less than ``need_gb`` is free."""
    free = free_disk_gb(path)
    if free < need_gb:
        raise NotEnoughDiskError(
            f"工作目录所在的磁盘（{display_path(path)}）只剩 {free:.1f} GB，但需要 {need_gb:.1f} GB"
            "（模型、检查点和导出的合并后的模型）。在 AutoDL 上请把工作目录放到数据盘："
            "python -m helpers.environment setup --workspace ~/autodl-tmp/qwen3-workspace" + fix_tail
        )
    return free


# --------------------------------------------------------------------------- what the course made

#: the file, in a folder, that says what in it the course made (``make reset`` removes only that)
MADE_MARKER = ".course-made"
#: marker line: the course created this folder
CREATED = "."
#: marker line: everything in this folder is the course's (a run, an export, a split)
WHOLE = "*"


def made_names(folder: str | os.PathLike) -> set[str] | None:
    """The marker's lines (``.``, ``*``, names of entries the course made or patterns of them), or None: no marker."""
    marker = Path(folder) / MADE_MARKER
    if marker.is_symlink() or not marker.is_file():
        return None
    try:
        text = marker.read_text(encoding="utf-8", errors="surrogateescape")   # names as the file system has them
    except OSError:
        return None
    return {line.strip() for line in text.splitlines() if line.strip()}


def listed(names: set[str], name: str) -> bool:
    """Whether a marker's lines name the entry ``name``: itself, ``*`` (everything) or a pattern (``checkpoint-*``)."""
    import fnmatch

    return name in names or any("*" in line and fnmatch.fnmatchcase(name, line) for line in names)


def unlisted(folder: str | os.PathLike) -> list[Path]:
    """What in ``folder`` its marker does not name (a learner's file): all of it when there is no marker."""
    names = made_names(folder) or set()
    return [p for p in Path(folder).iterdir() if p.name != MADE_MARKER and not listed(names, p.name)]


def write_marker(folder: Path, names: set[str]) -> None:
    """Write ``folder``'s marker: these lines, and nothing else."""
    marker = folder / MADE_MARKER
    try:
        marker.write_text("".join(f"{name}\n" for name in sorted(names)), encoding="utf-8", errors="surrogateescape")
    except OSError as err:
        _not_writable(err, folder, marker)
    os.chmod(marker, _umask_mode())


def blocking_file(path: str | os.PathLike) -> Path | None:
    """The file that stops ``path`` from being (or becoming) a folder: ``path`` itself or the nearest existing
    folder above it when that is a file; None when ``path`` is, or can be made, a folder."""
    probe = nearest_existing(path)
    return probe if probe.exists() and not probe.is_dir() else None


def course_folder(path: str | os.PathLike, whole: bool = True, only: tuple[str, ...] = ()) -> Path:
    """Create ``path`` (and its parents) and mark each folder this call created as the course's.

    ``whole``: everything that will be in ``path`` is the course's (an export, a split, a downloaded model).
    ``only``: the names (or patterns) of what the course writes in ``path`` (a run folder): a file the learner
    adds there stays the learner's. A folder that already existed is not claimed: what the course writes there is
    recorded by name (:func:`record_made`), so a learner's own folder never becomes the course's.
    """
    path = Path(path)
    created, probe = [], path
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        created.append(probe)
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UnsafeWriteError(f"{display_path(probe)} 是文件，不是文件夹：课程无法在它下面写入 "
                               f"{display_path(path)}。请换一个文件夹。")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        _not_writable(err, probe, path)
    for folder in reversed(created):
        write_marker(folder, {CREATED, *(only or [WHOLE])} if (whole or only) and folder == path else {CREATED})
    return path


def claim_folder(path: str | os.PathLike, only: tuple[str, ...] = ()) -> None:
    """Mark an existing folder as the course's: wholly, or (``only``) what these names and patterns match."""
    write_marker(Path(path), {CREATED, *(only or [WHOLE])})


def record_made(path: str | os.PathLike) -> Path:
    """Record that the course made the file (or folder) ``path``, in its folder's marker."""
    path = Path(path)
    if not path.parent.exists():
        course_folder(path.parent, whole=False)
    names = made_names(path.parent) or set()
    if not listed(names, path.name):
        write_marker(path.parent, names | {path.name})
    return path


def is_course_made(path: str | os.PathLike) -> bool:
    """Whether the course made ``path``: its own marker says so, or its folder's marker names it."""
    path = Path(path)
    own = made_names(path) if path.is_dir() and not path.is_symlink() else None
    if own is not None and (CREATED in own or WHOLE in own):
        return True
    return listed(made_names(path.parent) or set(), path.name)
