"""Shared fixtures: the real dataset from ../shared and the tiny model directory."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def huanhuan_path() -> Path:
    """The real 3,729-row huanhuan.json (never committed): $HUANHUAN_JSON or ../shared/data."""
    from helpers.data import real_dataset_path

    try:
        return real_dataset_path()
    except FileNotFoundError as err:
        pytest.fail(f"The real dataset is required for the test suite. {err}")


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model_dir) -> Path:
    """The tiny profile's memorisation adapter (trained fresh once, cached in the workspace)."""
    from helpers.train import train_memorisation_adapter

    return train_memorisation_adapter()


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from helpers.download import build_tiny_model

    return build_tiny_model()


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)
