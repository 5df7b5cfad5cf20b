"""Run every solution script in one process, as ``python solutions/NN_x.py`` runs it, and write what happened.

``python -m tests.solutions_runner OUT.json solutions/00_environment.py ...`` runs each script with
``runpy`` as ``__main__`` (``solutions/`` first on the path, a fresh ``_common`` each time, the
script as ``sys.argv[0]``), and records per script: whether it ended without an error, the exercises
it registered, the exercises that ran to their end, its seconds and the tail of its output.
One interpreter imports torch once for all of them; tests/test_solutions.py reads the JSON.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import runpy
import sys
import time
import traceback
from pathlib import Path

SOLUTIONS_DIR = Path(__file__).resolve().parent.parent / "solutions"


def run_script(script: Path) -> dict:
    sys.modules.pop("_common", None)
    common = importlib.import_module("_common")   # a fresh exercise registry for this script
    registered, finished = [], []
    register = common.exercise

    def recording_exercise(number: int, title: str):
        def wrap(function):
            def recorded():
                function()
                finished.append(number)

            register(number, title)(recorded)
            registered.append(number)
            return function

        return wrap

    common.exercise = recording_exercise
    output = io.StringIO()
    error = None
    start = time.perf_counter()
    saved_argv = sys.argv
    sys.argv = [str(script)]
    try:
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            runpy.run_path(str(script), run_name="__main__")
    except SystemExit as stop:
        if stop.code not in (None, 0):
            error = f"SystemExit({stop.code!r})"
    except BaseException:  # noqa: BLE001 - recorded, and the next script still runs
        error = traceback.format_exc()
    finally:
        sys.argv = saved_argv
    return {"ok": error is None, "error": error, "registered": sorted(registered), "finished": sorted(finished),
            "seconds": round(time.perf_counter() - start, 1), "output_tail": output.getvalue()[-4000:]}


def main(argv: list[str]) -> int:
    out, scripts = Path(argv[0]), [Path(a) for a in argv[1:]]
    sys.path.insert(0, str(SOLUTIONS_DIR))   # what `python solutions/NN_x.py` puts first on the path
    results = {}
    for script in scripts:
        results[script.name] = run_script(script)
        out.write_text(json.dumps(results, ensure_ascii=False, indent=1), encoding="utf-8")
        print(f"{script.name}: {'ok' if results[script.name]['ok'] else 'FAILED'} "
              f"({results[script.name]['seconds']} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
