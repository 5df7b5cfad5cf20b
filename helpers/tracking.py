"""SwanLab without traps: never a prompt, offline without an API key, records readable from disk.

The mode comes from the run spec (``spec.swanlab.mode``): ``online`` with ``SWANLAB_API_KEY`` or a key saved
by ``swanlab login`` (swanlab reads it itself), else ``offline`` into ``workspace/swanlog`` (upload later with
``swanlab sync <run dir>``). Facts of swanlab 0.10.3 handled here:

* without ``SWANLAB_INTERACTIVE=false`` it may call ``input()``, which blocks Jupyter and fails under nbval;
* transformers' ``report_to="swanlab"`` crashes ("No active Run") unless ``swanlab.init`` ran first, so
  :func:`start_run` initialises the run, the Trainer's callback reuses it and :func:`finish_run` closes it;
* ``SWANLAB_PROJECT`` in the environment breaks ``swanlab.init`` (read as a nested settings field);
* ``swanlab.yaml`` / ``.env`` in the working directory override environment variables, so ``mode`` and
  ``logdir`` are passed explicitly.
"""

from __future__ import annotations

import contextlib
import glob
import os
import threading
from collections import defaultdict
from pathlib import Path

from .errors import CourseError
from .hardware import reachable
from .settings import SWANLAB_MODE_ENV, has_swanlab_key
from .workspace import course_folder, display_path, record_made, repo_command, shell_path


class SwanLabSetupError(CourseError, RuntimeError):
    """The environment would make swanlab fail or prompt."""


def dashboard_command(swanlog: Path, port: int = 5092) -> str:
    """The local dashboard for runs recorded in ``local`` mode (needs ``swanlab[dashboard]``)."""
    return repo_command(f"swanlab watch {shell_path(swanlog)} --host 127.0.0.1 --port {port}", swanlog)


def describe_mode(mode: str) -> str:
    """One line (Chinese) on what the mode means for the learner."""
    return {
        "online": "online: 已有 API key（SWANLAB_API_KEY 或 `swanlab login` 保存的），记录会上传到 swanlab.cn",
        "offline": "offline: 没有 API key，记录写到工作目录的 swanlog/，之后可以用 `swanlab sync` 上传",
        "local": "local: 记录写到工作目录的 swanlog/，用 `swanlab watch` 在本机看",
        "disabled": "disabled: 不记录",
    }[mode]


#: where swanlab online mode sends records
SWANLAB_HOST = ("api.swanlab.cn", 443)


def swanlab_reachable() -> bool:
    return reachable(SWANLAB_HOST)


def experiment_name(spec) -> str:
    """The run's name in SwanLab: the config's, plus the run folder's name when the run is not in the profile's own
    folder (an ``--output-dir`` sweep, notebook 08's TRL run): two trainings never share a name on the dashboard."""
    name = spec.swanlab.experiment_name
    return name if spec.paths.run_dir.resolve() == spec.own_run_dir.resolve() else f"{name}-{spec.paths.run_dir.name}"


def start_run(spec, config: dict | None = None, reachable=swanlab_reachable):
    """Start a SwanLab run that can never prompt (see :func:`safe_mode`), named by :func:`experiment_name`; a wrong
    key with network stays an error."""
    import signal

    import swanlab

    # swanlab.init installs its own Ctrl-C handler, which finishes the run and then calls the one before it; when
    # that one is "ignore" (a background job: `python -m helpers.train &`), the training went on into a finished
    # run and failed at its next log step. Such a process keeps ignoring Ctrl-C, as its shell asked.
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    run = swanlab.init(
        project=spec.swanlab.project,
        experiment_name=experiment_name(spec),
        config=config if config is not None else spec.to_dict(),
        mode=safe_mode(spec, reachable),
        logdir=logdir(spec),
        settings=shareable_settings(swanlab),
        reinit=True,   # a run left open by a cell that failed is finished first, instead of refusing this one
    )
    if ignored and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return run


def require_key(spec) -> None:
    """A forced ``online`` mode without an API key stops here, before any work (swanlab would fail late)."""
    if spec.swanlab.enabled and spec.swanlab.mode == "online" and not has_swanlab_key(os.environ):
        raise SwanLabSetupError(
            "SwanLab 的 online 模式需要 API key：在终端里运行一次 `swanlab login`（保存后每个内核都能用），"
            f"或者设置 SWANLAB_API_KEY；也可以改用 {SWANLAB_MODE_ENV}=offline。")


def safe_mode(spec, reachable=swanlab_reachable) -> str:
    """The mode to pass to ``swanlab.init``, with swanlab's prompt switched off for good.

    Sets ``SWANLAB_INTERACTIVE=false``, stops on environment variables swanlab cannot parse, warns about
    files that override them, and turns ``online`` into ``offline`` (with one line saying so) when
    swanlab.cn cannot be reached. ``disabled`` when tracking is off.
    """
    require_key(spec)
    os.environ["SWANLAB_INTERACTIVE"] = "false"
    for name in ("SWANLAB_PROJECT", "SWANLAB_RUN", "SWANLAB_EXPERIMENT"):   # nested settings groups
        if name in os.environ:
            raise SwanLabSetupError(
                f"环境变量里设置了 {name}：swanlab 0.10 无法解析它，init 时会失败。取消它（`unset {name}`），"
                f"改用 {name}_NAME，或者在配置里写 project=。"
            )
    for name in ("swanlab.yaml", "swanlab.yml", ".env"):
        path = Path.cwd() / name
        if path.is_file() and (name != ".env" or "SWANLAB_" in path.read_text(encoding="utf-8", errors="ignore")):
            print(f"SwanLab: 当前目录里的 {name} 会覆盖 SWANLAB_* 环境变量（mode 和 logdir 是显式传入的，"
                  "所以仍然有效）。")
    mode = spec.swanlab.mode if spec.swanlab.enabled else "disabled"
    if mode == "online" and not reachable():
        print(f"SwanLab: {SWANLAB_HOST[0]} 无法连接（没有网络？），本次改为 offline 记录；有网络后用 "
              "`swanlab sync <run 目录>` 上传（训练结束时会打印这个命令）。")
        mode = "offline"
    return mode


def logdir(spec) -> str:
    """The workspace's ``swanlog/`` folder (created), relative to the working directory when it can be:
    swanlab prints it, and a relative path keeps those messages free of machine paths."""
    folder = spec.paths.swanlog
    course_folder(folder)    # a swanlog folder the learner had already is not claimed
    try:
        return os.path.relpath(folder)
    except ValueError:
        return str(folder)


def shareable_settings(swanlab):
    """swanlab's settings for a run that may be shared: no runtime probe (hostname, working directory,
    command line, Python path), no swanlab probe (the run folder's absolute path) and no git probe (the
    remote's URL, which may hold a token or a machine path) in ``files/swanlab-metadata.json``, which
    ``swanlab sync`` uploads. Hardware and packages stay."""
    return swanlab.Settings(probe=swanlab.Settings.Probe(runtime=False, swanlab=False, git=False))


def active_run(swanlab):
    """The SwanLab run that is open in this process, or None."""
    try:
        return swanlab.get_run()
    except RuntimeError:
        return None


def finish_run(run=None, error: BaseException | None = None) -> Path | None:
    """Finish the active run (the records reach the disk now); return its folder, or None when nothing was
    recorded (mode ``disabled``: the folder swanlab names is never written). ``error``: what ended it, if
    anything did: the run is marked aborted (Ctrl+C) or crashed, with the error's type only (a traceback holds
    machine paths, and ``swanlab sync`` uploads it)."""
    import swanlab

    still_open = active_run(swanlab)    # None after Ctrl+C: swanlab finished the run itself ("aborted")
    run = run or still_open
    if run is None:
        return None
    folder = Path(run.dir).resolve()
    if still_open is None:
        pass
    elif error is None:
        swanlab.finish()
    else:
        swanlab.finish(state="aborted" if isinstance(error, KeyboardInterrupt) else "crashed",
                       error=type(error).__name__)
    if not any(folder.glob("run-*.swanlab")):
        return None
    record_made(folder)     # the learner's own swanlog folder keeps what was there before
    _RECORDED_MODES[folder] = run.mode
    return folder


#: the mode each run folder :func:`finish_run` returned was recorded in (``online`` may have become ``offline``)
_RECORDED_MODES: dict[Path, str] = {}


def recorded_mode(run_folder: Path | None, spec) -> str:
    """The mode the run in ``run_folder`` was recorded in: what :func:`safe_mode` gave swanlab (``offline`` when
    swanlab.cn could not be reached), else the spec's setting."""
    return _RECORDED_MODES.get(Path(run_folder).resolve(), spec.swanlab.mode) if run_folder else spec.swanlab.mode


def sync_command(run_folder: Path) -> str:
    """The command that uploads an offline run later (after ``swanlab login``)."""
    return repo_command(f"swanlab sync {shell_path(run_folder)}", run_folder)


def describe_record(run_folder: Path | None, swanlog: Path) -> str:
    """Where the run's record is and the commands that show it (upload, local dashboard); or that nothing was
    recorded (``run_folder`` None: SwanLab was disabled)."""
    if run_folder is None:
        return (f"SwanLab: disabled，这次没有记录（要记录，设 {SWANLAB_MODE_ENV}=offline 或在设置文件里写 "
                "swanlab_mode: offline）")
    return "\n".join([f"SwanLab run 目录: {display_path(run_folder)}",
                      f"上传（offline）: {sync_command(run_folder)}",
                      f"本地看板（local）: {dashboard_command(swanlog)}"])


def read_scalars(run_folder: str | os.PathLike | None) -> dict[str, list[tuple[int, float]]]:
    """Read every logged scalar back from a finished run's ``.swanlab`` file.

    Returns ``{key: [(step, value), ...]}`` using swanlab's own record reader ({} for ``None``: a run
    :func:`finish_run` found nothing recorded for, as with SwanLab disabled).
    System metrics (``__swanlab__.*``) are left out.
    """
    from swanlab.proto.swanlab.record.v1.record_pb2 import Record
    from swanlab.sdk.internal.core_python.store import DataStoreReader

    if run_folder is None:
        return {}
    files = glob.glob(os.path.join(os.fspath(run_folder), "run-*.swanlab"))
    if len(files) != 1:
        raise FileNotFoundError(f"{display_path(run_folder)} 里应当正好有一个 run-*.swanlab 文件，"
                                f"实际有 {len(files)} 个")
    out: dict[str, list[tuple[int, float]]] = defaultdict(list)
    reader = DataStoreReader()
    reader.open(files[0])
    try:
        for raw in reader:
            record = Record()
            record.ParseFromString(raw)
            if record.WhichOneof("record_type") == "scalar" and not record.scalar.key.startswith("__swanlab__"):
                out[record.scalar.key].append((record.scalar.step, record.scalar.value.number))
    finally:
        reader.close()
    return dict(out)


# --------------------------------------------------------------------------- no machine paths in the run's config


@contextlib.contextmanager
def _shareable_model_names(model, name: str):
    """While SwanLab copies the model's config: the base model's name (hub id or workspace path), not its folder."""
    config = getattr(model, "config", None)
    peft_configs = list((getattr(model, "peft_config", None) or {}).values())
    saved = (getattr(config, "_name_or_path", None), [c.base_model_name_or_path for c in peft_configs])
    try:
        if config is not None:
            config._name_or_path = name
        for peft_config in peft_configs:
            peft_config.base_model_name_or_path = name
        yield
    finally:
        if config is not None:
            config._name_or_path = saved[0]
        for peft_config, old in zip(peft_configs, saved[1], strict=True):
            peft_config.base_model_name_or_path = old


def share_safe_swanlab(trainer, base_model: str, shareable_args) -> None:
    """transformers' SwanLab callback logs ``args.to_dict()`` and the model's config into the run's config
    (``output_dir`` and ``_name_or_path``: machine paths, uploaded by ``swanlab sync``); swap it for one that
    logs ``shareable_args(args)`` (no machine path) and ``base_model`` (hub id or workspace path) (its documented extension point is
    ``setup``)."""
    if "swanlab" not in (trainer.args.report_to or []):
        return  # nothing reports to SwanLab (and swanlab need not even be installed)
    from transformers.integrations import SwanLabCallback

    if trainer.pop_callback(SwanLabCallback) is None:
        return

    class ShareSafeSwanLabCallback(SwanLabCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            # without an open run transformers would log into a finished one (an error at the first log) or
            # start its own, without the course's mode and folder (a prompt, records in the working directory)
            if state.is_world_process_zero and active_run(self._swanlab) is None:
                raise SwanLabSetupError(
                    "没有打开的 SwanLab 运行（上次训练后已经结束，或者从没开始）：重新运行 swanlab.init 那个单元格"
                    "（第 08 课：tracking.start_run），再训练；或者用 report_to=\"none\" 不带 SwanLab 训练。")
            return super().on_train_begin(args, state, control, model=model, **kwargs)

        def setup(self, args, state, model, **kwargs):
            with _shareable_model_names(model, base_model):
                super().setup(shareable_args(args), state, model, **kwargs)

    trainer.add_callback(ShareSafeSwanLabCallback())
