"""SwanLab without traps: never a prompt, offline by default, records readable from disk.

* No ``SWANLAB_API_KEY`` in the environment -> ``mode="offline"``: the run is written
  to ``workspace/swanlog`` and can be uploaded later with ``swanlab sync <run dir>``.
* ``SWANLAB_API_KEY`` set -> ``mode="online"`` (swanlab reads the key itself; it is never
  typed into a cell or printed).
* ``SWANLAB_INTERACTIVE=false`` is always set, so swanlab 0.10 can never call
  ``input()`` (which would block a Jupyter notebook and fail under nbval).

Facts of swanlab 0.10.3 handled here:
* transformers' ``report_to="swanlab"`` crashes ("No active Run") unless
  ``swanlab.init`` ran first, so :func:`start_run` initialises the run and the
  Trainer's callback reuses it; :func:`finish_run` closes it (nobody else does).
* ``SWANLAB_PROJECT`` in the environment breaks ``swanlab.init`` (its settings parser
  reads it as a nested field); use ``SWANLAB_PROJECT_NAME`` or ``project=``.
* ``swanlab.yaml`` / ``.env`` in the working directory override environment variables;
  we pass ``mode`` and ``logdir`` explicitly, which beat both.
"""

from __future__ import annotations

import glob
import os
from collections import defaultdict
from pathlib import Path

from .workspace import display_path, workspace_path

#: Environment variables swanlab cannot parse (nested settings groups).
BROKEN_SWANLAB_VARS = ("SWANLAB_PROJECT", "SWANLAB_RUN", "SWANLAB_EXPERIMENT")


class SwanLabSetupError(RuntimeError):
    """The environment would make swanlab fail or prompt."""


#: Force a mode: offline | online | local (needs ``swanlab[dashboard]``, for ``swanlab watch``) | disabled.
MODE_ENV = "QWEN3_TUTORIAL_SWANLAB_MODE"
MODES = ("offline", "online", "local", "disabled")


def swanlab_mode() -> str:
    """``online`` when an API key is in the environment, else ``offline`` (or what MODE_ENV says)."""
    forced = os.environ.get(MODE_ENV, "").strip().lower()
    if forced:
        if forced not in MODES:
            raise SwanLabSetupError(f"{MODE_ENV}={forced!r}: choose one of {', '.join(MODES)}")
        if forced == "online" and not os.environ.get("SWANLAB_API_KEY"):
            raise SwanLabSetupError(
                "online mode needs SWANLAB_API_KEY in the environment (export it in the terminal "
                "before starting Jupyter; never type the key into a cell)."
            )
        return forced
    return "online" if os.environ.get("SWANLAB_API_KEY") else "offline"


def dashboard_command(port: int = 5092) -> str:
    """The local dashboard for runs recorded in ``local`` mode (needs ``swanlab[dashboard]``)."""
    return f"swanlab watch {display_path(swanlog_dir())} --host 127.0.0.1 --port {port}"


def swanlog_dir() -> Path:
    return workspace_path("swanlog")


def check_swanlab_environment(cwd: str | os.PathLike | None = None) -> list[str]:
    """Raise on settings swanlab cannot parse; return warnings about files that override env vars."""
    for name in BROKEN_SWANLAB_VARS:
        if name in os.environ:
            fix = "SWANLAB_PROJECT_NAME" if name == "SWANLAB_PROJECT" else f"{name}_NAME"
            raise SwanLabSetupError(
                f"{name} is set in the environment; swanlab 0.10 cannot parse it and fails in init. "
                f"Unset it (`unset {name}`) and use {fix} instead, or pass project= in the config."
            )
    warnings = []
    cwd = Path(cwd or os.getcwd())
    for name in ("swanlab.yaml", "swanlab.yml", ".env"):
        path = cwd / name
        if path.is_file() and (name != ".env" or "SWANLAB_" in path.read_text(encoding="utf-8", errors="ignore")):
            warnings.append(
                f"{name} in the working directory overrides SWANLAB_* environment variables "
                "(mode and logdir are passed explicitly, so they still apply)."
            )
    return warnings


def start_run(project: str, experiment_name: str, config: dict | None = None, logdir: Path | None = None):
    """Start a SwanLab run that can never prompt; returns the run."""
    import swanlab

    os.environ["SWANLAB_INTERACTIVE"] = "false"
    for warning in check_swanlab_environment():
        print("SwanLab:", warning)
    logdir = Path(logdir) if logdir else swanlog_dir()
    logdir.mkdir(parents=True, exist_ok=True)
    # A relative logdir keeps swanlab's own console messages free of absolute paths.
    relative = os.path.relpath(logdir)
    return swanlab.init(
        project=project,
        experiment_name=experiment_name,
        config=config or {},
        mode=swanlab_mode(),
        logdir=relative,
    )


def finish_run(run=None) -> Path | None:
    """Finish the active run (the records reach the disk now); return its folder."""
    import swanlab

    try:
        run = run or swanlab.get_run()
    except RuntimeError:
        return None
    folder = Path(run.dir).resolve()
    swanlab.finish()
    return folder


def sync_command(run_folder: Path) -> str:
    """The command that uploads an offline run later (after ``swanlab login``)."""
    return f"swanlab sync {display_path(run_folder)}"


def read_scalars(run_folder: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Read every logged scalar back from a finished run's ``.swanlab`` file.

    Returns ``{key: [(step, value), ...]}`` using swanlab's own record reader.
    System metrics (``__swanlab__.*``) are left out.
    """
    from swanlab.proto.swanlab.record.v1.record_pb2 import Record
    from swanlab.sdk.internal.core_python.store import DataStoreReader

    files = glob.glob(os.path.join(os.fspath(run_folder), "run-*.swanlab"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one run-*.swanlab file in {display_path(run_folder)}, found {len(files)}")
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
