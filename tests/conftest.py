"""Shared fixtures: the real dataset from ../shared and the tiny model directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers.workspace import REPO_ROOT

#: The real 3,729-row huanhuan.json (never committed): ../shared/data, or HUANHUAN_JSON.
HUANHUAN_JSON = Path(os.environ.get("HUANHUAN_JSON", REPO_ROOT.parent / "shared" / "data" / "huanhuan.json"))


@pytest.fixture(scope="session")
def huanhuan_path() -> Path:
    if not HUANHUAN_JSON.is_file():
        pytest.fail(
            f"The real dataset is required for the test suite: {HUANHUAN_JSON} is missing "
            "(set HUANHUAN_JSON to its path)."
        )
    return HUANHUAN_JSON


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from helpers.download import build_tiny_model

    return build_tiny_model()


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)
