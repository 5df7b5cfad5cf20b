"""Reusable code for the Qwen3-8B LoRA + SwanLab course.

Each notebook ``notebooks/NN-topic.ipynb`` imports the module named after its topic
(``helpers/topic.py``); the tests in ``tests/test_topic.py`` check it. Every module can also be run
as ``python -m helpers.<topic>`` where the notebook has a command-line twin.

The modules form layers; an import only ever points down a layer or sideways without a circle
(``tests/test_layers.py`` enforces it, function-level imports included):

1. foundation - ``errors`` (``CourseError``, the CLI runner), ``workspace`` (paths, atomic writes,
   sha256, free disk), ``hardware`` (GPUs, memory, launch ranks);
2. config - ``profiles``, ``settings`` (environment and settings file), ``spec`` (every setting resolved
   once into a frozen ``RunSpec``);
3. domain - ``validation``, ``data_files``, ``padding``, ``data`` (records, the held-out split, the
   encoded files, encoding), ``original``, ``models`` (shapes, loading, LoRA
   config), ``checkpoints``, ``tracking``, ``recipes``, ``metrics``, ``runs`` (run summaries, resume, plots);
4. workflows - ``download``, ``train``, ``export``, ``inference``, ``evaluate``, ``scale_out``,
   ``environment``, ``reset``;
5. edge - ``chat_app`` (the widget).

``bench/``, ``solutions/`` and ``tests/`` import ``helpers``; ``helpers`` never imports them.
"""

import logging as _logging
import sys as _sys
import warnings as _warnings

from .errors import quiet_interrupt as _quiet_interrupt

# ``python -m helpers.<topic>``: argv[0] is "-m" while the module is found (Python's documented behaviour); a
# Ctrl-C during the imports that follow is one line, like one during the command's work (errors.run_cli)
if _sys.argv[:1] == ["-m"]:
    _sys.excepthook = _quiet_interrupt

# peft 0.21 still asks transformers 5 for a renamed attribute; the warning is noise for learners.
_warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
# bitsandbytes 0.50, imported by transformers and peft, looks on a CPU with AVX512-BF16 for an optional hub
# kernel and logs "Failed to load CPU gemm_4bit_forward ... pip install kernels" when it is absent; its own
# CPU code is used instead, and installing `kernels` would make every import reach for the hub.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
