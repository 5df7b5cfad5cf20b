"""Where the course's settings come from: environment variables and the git-ignored settings file.

Environment variables (``QWEN3_TUTORIAL_*``) beat the settings file ``course-settings.yaml`` at the
repository root (written by notebook 00 or ``python -m helpers.environment setup``), so a JupyterLab
kernel started without your shell's variables still sees them. :mod:`helpers.spec` turns them, with
the training config, into one run spec.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path

from .errors import CourseError
from .workspace import REPO_ROOT, blocking_file, display_path, shell_path

PROFILE_ENV = "QWEN3_TUTORIAL_PROFILE"
WORKSPACE_ENV = "QWEN3_TUTORIAL_WORKSPACE"
MODEL_DIR_ENV = "QWEN3_TUTORIAL_MODEL_DIR"
DATASET_ENV = "QWEN3_TUTORIAL_DATASET"
ADAPTER_DIR_ENV = "QWEN3_TUTORIAL_ADAPTER_DIR"
SWANLAB_MODE_ENV = "QWEN3_TUTORIAL_SWANLAB_MODE"

#: The git-ignored settings file at the repository root (YAML, flat keys).
SETTINGS_FILE = REPO_ROOT / "course-settings.yaml"
#: settings-file key -> environment variable that beats it
SETTINGS_KEYS = {
    "profile": PROFILE_ENV,
    "workspace": WORKSPACE_ENV,
    "model_dir": MODEL_DIR_ENV,
    "dataset": DATASET_ENV,
    "adapter_dir": ADAPTER_DIR_ENV,
    "swanlab_mode": SWANLAB_MODE_ENV,
}
#: the settings that name a file or folder
PATH_KEYS = ("workspace", "model_dir", "dataset", "adapter_dir")

SWANLAB_MODES = ("offline", "online", "local", "disabled")


class SpecError(CourseError, ValueError):
    """A course setting is wrong; the message names the setting and the fix."""


def suggest(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f"（是不是想写 {close[0]!r}？）" if close else ""


def read_settings_file(path: Path = SETTINGS_FILE) -> dict:
    """The settings file's values ({} when there is none); one-line errors for a folder, bytes or rights."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return {}
    if path.is_dir():
        raise SpecError(f"{display_path(path)} 是文件夹，不是设置文件：请删除它（或移到别处）。")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SpecError(f"{display_path(path)} 不是 UTF-8 文本（存成了 GBK？）：请另存为 UTF-8，"
                        "或者删除它，再运行 `python -m helpers.environment setup`。") from None
    except OSError as err:
        raise SpecError(f"无法读取 {display_path(path)}（{err.strerror}）：请修正它的权限（chmod u+r），"
                        "或者删除它。") from None
    try:
        import yaml
    except ImportError:
        raise SpecError(f"读取 {display_path(path)} 需要 PyYAML：请用课程的 .venv 运行（`make venv`），"
                        "或者把这个文件移走、改用 QWEN3_TUTORIAL_* 环境变量设置这些值。") from None
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise SpecError(f"{display_path(path)} 不是有效的 YAML（{err}）：请修正或删除它。") from None
    if not isinstance(values, dict):
        raise SpecError(f"{display_path(path)} 应当由 `key: value` 形式的行组成。")
    unknown = sorted(set(map(str, values)) - set(SETTINGS_KEYS))
    if unknown:
        raise SpecError(f"{display_path(path)}：未知的设置 {unknown[0]!r}{suggest(unknown[0], SETTINGS_KEYS)}。"
                        f"可用的设置：{', '.join(SETTINGS_KEYS)}。")
    values = {k: v for k, v in values.items() if v is not None and v != ""}
    for key, value in values.items():
        if not isinstance(value, str):
            raise SpecError(f"{display_path(path)}：{key} 应当是文本（名称或路径），实际是 {value!r}；"
                            f"请给它加上引号，例如 {key}: \"...\"")
    return values


def course_settings(env: Mapping[str, str] | None = None, settings_file: Path | None = SETTINGS_FILE) -> dict:
    """Each setting's value and where it came from: {key: (value, origin)}; environment beats the file."""
    env = os.environ if env is None else env
    from_file = read_settings_file(settings_file) if settings_file else {}
    out = {}
    for key, variable in SETTINGS_KEYS.items():
        if env.get(variable, "").strip():
            out[key] = (env[variable].strip(), f"环境变量 {variable}")
        elif key in from_file:
            out[key] = (from_file[key], f"设置文件 {display_path(settings_file)}")
        else:
            continue
        if key in PATH_KEYS and not os.path.isabs(os.path.expanduser(out[key][0])):   # the same from any folder
            out[key] = (out[key][0], out[key][1] + "，相对路径从仓库根目录算起")
    return out


def overriding_variable(key: str) -> str | None:
    """The environment variable that sets ``key`` in this process, if any: it beats the settings file."""
    variable = SETTINGS_KEYS[key]
    return variable if os.environ.get(variable, "").strip() else None


def and_unset(key: str) -> str:
    """The tail of a ``setup`` fix when an environment variable would still beat what setup writes."""
    variable = overriding_variable(key)
    return f"，再 `unset {variable}`（环境变量优先于设置文件）" if variable else ""


def learner_given(settings: dict, *, modelscope: bool, data_file: bool, set_profile: str | None) -> frozenset[str]:
    """What the learner named: the paths of ``settings`` (``model_dir`` only for a downloaded model), ``dataset``
    for a config's own data file (``data_file``), and ``profile`` when ``set_profile`` (the variable's or the
    settings file's value, not a flag's) chose it rather than a config or auto."""
    return frozenset({*(k for k in ("workspace", "dataset", "adapter_dir") if k in settings),
                      *(["model_dir"] if "model_dir" in settings and modelscope else []),
                      *(["dataset"] if data_file else []),
                      *(["profile"] if (set_profile or "").strip().lower() not in ("", "auto") else [])})


def resolve_swanlab_mode(forced: str | None, origin: str, env: Mapping[str, str]) -> str:
    """offline | online | local | disabled: a forced mode (set where ``origin`` says), else online when a key is
    known. A forced ``online`` without a key is refused where a run starts (:func:`helpers.tracking.require_key`),
    not here: commands that never track (``inference ask``, ``export``) work whatever the mode."""
    forced = (forced or "").strip().lower()
    if forced:
        if forced not in SWANLAB_MODES:
            raise SpecError(f"swanlab_mode={forced!r}（来自 {origin}）不是可用的模式："
                            f"请从 {', '.join(SWANLAB_MODES)} 中选一个")
        return forced
    return "online" if has_swanlab_key(env) else "offline"


def has_swanlab_key(env: Mapping[str, str]) -> bool:
    """Whether SwanLab has an API key: ``SWANLAB_API_KEY`` or one ``swanlab login`` saved."""
    return bool(env.get("SWANLAB_API_KEY")) or saved_swanlab_login()


def saved_swanlab_login() -> bool:
    """Whether `swanlab login` saved a key for this project or user (swanlab's own .netrc, read by swanlab)."""
    try:
        from swanlab.sdk.internal.pkg import nrc
        from swanlab.sdk.internal.settings import Settings
    except ImportError:  # another swanlab version: no saved key is assumed
        return False
    for folder in (Settings.get_pwd_config_dir(), Settings.get_user_config_dir()):
        try:
            if (folder / ".netrc").is_file() and nrc.read(folder / ".netrc"):
                return True
        except Exception:  # noqa: BLE001 - an unreadable file is no key
            continue
    return False


# --------------------------------------------------------------------------- paths a config names


#: what each protected path of :func:`refuse_run_dir` is called in its message
PROTECTED_LABELS = {"workspace": "工作目录", "model_dir": "模型目录", "dataset": "数据集"}


def refuse_run_dir(run_dir: Path, protected: dict[str, Path]) -> None:
    """--output-dir is never the workspace, the model or the dataset, a folder holding them, or inside the model.
    ``protected``: {``workspace`` | ``model_dir`` | ``dataset``: path}."""
    run = run_dir.resolve()
    for what, path in protected.items():
        path = path.resolve()
        if run == path or run in path.parents or (what == "model_dir" and path in run.parents):
            raise SpecError(f"--output-dir {display_path(run_dir)} 就是（或包含）{PROTECTED_LABELS.get(what, what)} "
                            f"{display_path(path)}：在那里重新开始训练会把它移到一边。请给运行目录一个单独的文件夹，"
                            f"例如 --output-dir {shell_path(protected['workspace'] / 'checkpoints' / 'mine')}")
    blocking = blocking_file(run)
    if blocking is not None:   # every command says so at once (evaluate would offer a train command that fails)
        below = "" if blocking == run else f"，--output-dir {display_path(run_dir)} 在它下面"
        raise SpecError(f"{display_path(blocking)} 是文件，不是文件夹{below}：运行目录要是一个文件夹，"
                        f"例如 --output-dir {shell_path(protected['workspace'] / 'checkpoints' / 'mine')}")
    if run == Path.home().resolve() or run == REPO_ROOT or run.parent == run:
        raise SpecError(f"--output-dir {display_path(run_dir)} 是一个放着其他文件的大文件夹：请给运行目录一个单独的文件夹，"
                        f"例如 --output-dir {shell_path(protected['workspace'] / 'checkpoints' / 'mine')}")
