"""Reusable code for the Qwen3-8B LoRA + SwanLab course.

Each notebook ``notebooks/NN-topic.ipynb`` imports the module named after its
topic (``helpers/topic.py``); the tests in ``tests/test_topic.py`` check it.
"""

__version__ = "0.1.0"

import warnings as _warnings

# peft 0.21 still asks transformers 5 for a renamed attribute; the warning is noise for learners.
_warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
