"""What every solution script shares: the tiny-profile spec, a memorised adapter, and running exercises.

A solution script is run from the repository root (``python solutions/05_inference.py``) and runs
all of its exercises; ``python solutions/05_inference.py 2`` runs exercise 2 only. The scripts are
edges, like a notebook's first cell: they build the spec once and hand it down.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python solutions/NN_x.py` puts solutions/, not the root, on the path
    sys.path.insert(0, str(REPO_ROOT))

#: the run folder (in the solutions' workspace) where a memorisation adapter is trained when none is found
SOLUTIONS_RUN = "tiny-memorisation"

_EXERCISES: list[tuple[int, str, Callable[[], None]]] = []


def exercise(number: int, title: str):
    """Register a function as the solution to exercise ``number``."""

    def register(function: Callable[[], None]) -> Callable[[], None]:
        _EXERCISES.append((number, title, function))
        return function

    return register


def run(argv: list[str] | None = None) -> None:
    """Run the exercises named on the command line (numbers), or all of them."""
    from helpers.errors import ERROR_EXIT, ERROR_PREFIX, CourseError, one_line, reader_gone

    argv = sys.argv[1:] if argv is None else argv
    known = {number for number, _, _ in _EXERCISES}
    if {"-h", "--help"} & set(argv):   # what the script offers, nothing run (also after an exercise number)
        print(f"python {sys.argv[0]} [编号 ...]：做这些练习（不写编号就做全部练习）")
        for number, title, _ in sorted(_EXERCISES, key=lambda item: item[0]):
            print(f"  {number}  {title}")
        return
    numbers = [a for a in argv if a.isascii() and a.isdigit()]   # "①" and "²" are digits to isdigit, not to int
    chosen = {int(a) for a in numbers} or known
    unknown = chosen - known
    if unknown or len(numbers) < len(argv):   # a mistyped number: one line and exit 2, like a course error
        print(f"{ERROR_PREFIX}没有这个练习：{' '.join(argv)}。这个脚本的练习是 {sorted(known)}，例如 "
              f"python {sys.argv[0]} {min(known)}（不写编号就做全部练习）", file=sys.stderr)
        raise SystemExit(ERROR_EXIT)
    try:
        for number, title, function in sorted(_EXERCISES, key=lambda item: item[0]):
            if number not in chosen:
                continue
            print(f"\n=== 练习 {number}：{title} ===")
            start = time.perf_counter()
            try:
                function()
            except CourseError as err:   # something to fix before the exercise can run (a setting, a missing file)
                print(f"{ERROR_PREFIX}{one_line(str(err))}", file=sys.stderr)
                raise SystemExit(ERROR_EXIT) from None
            print(f"--- 练习 {number} 通过（{time.perf_counter() - start:.1f} 秒）")
        sys.stdout.flush()
    except BrokenPipeError:   # `python solutions/03_data.py | head`: no traceback about the reader going away
        raise SystemExit(reader_gone()) from None


def tiny_spec(*overrides: str, run_dir: str | Path | None = None):
    """The tiny profile's spec (its own config plus ``--set``-style overrides).

    The workspace, the dataset and an adapter folder come from the usual settings
    (``QWEN3_TUTORIAL_WORKSPACE`` etc. or ``course-settings.yaml``); the profile is always tiny.
    """
    from helpers.spec import build_spec

    return build_spec(None, overrides, profile="tiny", output_dir=run_dir)


def tiny_tokenizer(spec):
    """The tiny profile's tokenizer (the real Qwen3 one), building the model folder if needed."""
    from helpers.download import prepare_model
    from helpers.models import load_tokenizer

    prepare_model(spec)
    return load_tokenizer(spec)


def scratch_spec(run_name: str, *overrides: str):
    """A tiny spec whose workspace is ``<workspace>/solutions`` and whose run folder is ``checkpoints/<run_name>``.

    Runs trained by the solutions (their encoded data, plots and checkpoints) stay there, apart from
    the notebooks' own; the tiny model folder is shared through a link, not copied.
    """
    import os

    from helpers.download import prepare_model
    from helpers.settings import WORKSPACE_ENV
    from helpers.spec import build_spec
    from helpers.workspace import course_folder

    main = tiny_spec()
    model = prepare_model(main)
    root = main.paths.workspace / "solutions"
    link = root / "models" / model.name
    if not link.exists():
        course_folder(root)    # the solutions' own workspace: make reset removes it (the model it links stays)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(model, target_is_directory=True)
    env = {**os.environ, WORKSPACE_ENV: str(root)}
    return build_spec(None, overrides, profile="tiny", env=env, output_dir=root / "checkpoints" / run_name)


def train_fresh(spec) -> dict:
    """Train ``spec`` from scratch into its (emptied) run folder; return the run summary."""
    import shutil

    from helpers import train

    shutil.rmtree(spec.paths.run_dir, ignore_errors=True)
    return train.train(spec, resume=False)


def finished_training(checkpoint: Path, spec) -> bool:
    """Whether ``checkpoint`` has trained to the end ``spec``'s recipe plans (its ``max_steps``, or else its epochs):
    an interrupted or shortened run has not memorised the answers yet."""
    from transformers import TrainerState

    from helpers.runs import reached_end

    state = Path(checkpoint) / "trainer_state.json"
    return state.is_file() and reached_end(TrainerState.load_from_json(str(state)), spec.training["max_steps"],
                                           spec.training["num_train_epochs"])


def memorised_adapter(spec) -> Path:
    """A LoRA adapter of the tiny memorisation recipe (``configs/train/tiny.yaml``).

    In this order: the adapter folder of the settings (``QWEN3_TUTORIAL_ADAPTER_DIR`` or ``adapter_dir``
    in ``course-settings.yaml``) when it was trained on the tiny profile; the last checkpoint of notebook
    04's tiny run when that training has finished; one trained here once into
    ``<workspace>/solutions/checkpoints/tiny-memorisation`` (a minute or two on a CPU).
    """
    from helpers import checkpoints
    from helpers.download import prepare_model
    from helpers.workspace import display_path

    prepare_model(spec)
    if spec.paths.adapter_dir is not None:
        adapter, notes = checkpoints.resolve_checkpoint(spec)
        profile = checkpoints.read_recipe(adapter).get("profile")   # None: an adapter from elsewhere
        if profile == "tiny":
            for note in notes:
                print(note)
            return adapter
        trained = f"是在 {profile} 档位上训练的" if profile else f"没有 {checkpoints.RECIPE_FILE}，不知道是在哪个档位上训练的"
        print(f"设置里的适配器 {display_path(adapter)}（adapter_dir）{trained}，参考答案只用 tiny 档位：改用 tiny 的适配器")
    fallback = scratch_spec(SOLUTIONS_RUN, "swanlab=null", "training.disable_tqdm=true")
    for run_dir in (spec.paths.run_dir, fallback.paths.run_dir):
        found = checkpoints.latest_good_checkpoint(run_dir).checkpoint if run_dir.is_dir() else None
        if found is not None and finished_training(found, spec):
            return found
        if found is not None:
            print(f"{display_path(run_dir)} 的训练还没有做完（最新的检查点是 {found.name}），还没背下训练数据：不用它")
    print(f"没有找到 tiny 的 LoRA 适配器：现在训练一个（CPU 上一两分钟）→ {display_path(fallback.paths.run_dir)}")
    return Path(train_fresh(fallback)["checkpoint"])


def prompt_inputs(model, tokenizer, messages: list[dict]) -> dict:
    """``generate`` inputs for a chat, rendered as training renders it (user text stays text)."""
    import torch

    from helpers.data import prompt_ids_as_text

    ids = torch.tensor([prompt_ids_as_text(tokenizer, messages)], device=model.device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
