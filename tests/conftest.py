"""Shared fixtures: the run spec of the tiny profile, its model, the real dataset (read and encoded
once per session) and one tiny training per recipe (the memorisation adapter, plain and QLoRA).

The spec is built here, at the edge, from an empty environment and no settings file, so a
developer's own settings never change what the tests see.

A recipe's tiny training is kept in ``workspace/checkpoints/`` with a fingerprint of the code,
config, data and library versions that made it; it is trained again only when that fingerprint
changes, under a file lock, so that two test processes never train into one folder at once.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from helpers import runs
from helpers.workspace import REPO_ROOT, record_made


def stand_in_weights(path: Path) -> Path:
    """A whole one-tensor safetensors file, for a test whose model folder must count as downloaded
    (``models.weights_present`` reads each file's header) while ``from_pretrained`` is faked or never reached."""
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"stand_in": np.zeros(1, dtype=np.float32)}, str(path))
    return path


def tiny_spec_for(run_dir: Path | None = None, config: str | None = None, overrides=(), **env):
    """A tiny-profile spec from an explicit environment (``env`` may relocate the workspace)."""
    from helpers.settings import SWANLAB_MODE_ENV
    from helpers.spec import build_spec

    env.setdefault(SWANLAB_MODE_ENV, "offline")  # a key saved by `swanlab login` on this machine: still offline
    return build_spec(config, overrides, profile=None if config else "tiny", env=env, settings_file=None,
                      output_dir=run_dir)


@pytest.fixture(scope="session")
def tiny_spec():
    return tiny_spec_for()


@pytest.fixture(scope="session")
def huanhuan_path() -> Path:
    """The real 3,729-row huanhuan.json (never committed): $HUANHUAN_JSON or ../shared/data."""
    from bench.common import real_dataset_path

    try:
        return real_dataset_path(os.environ)
    except FileNotFoundError as err:
        pytest.fail(f"The real dataset is required for the test suite. {err}")


@pytest.fixture(scope="session")
def real_dataset(huanhuan_path):
    """The real dataset read and validated once per session (``.records``, ``.report``)."""
    from helpers.validation import load_records

    return load_records(huanhuan_path)


@pytest.fixture(scope="session")
def real_records(real_dataset) -> list[dict]:
    """The real dataset's rows."""
    return real_dataset.records


@pytest.fixture(scope="session")
def real_encoded(real_records, tokenizer, tmp_path_factory, request):
    """(samples, report) of the real rows encoded with the course defaults, once per session: under
    ``-n 2`` the first worker to need them encodes, and the other reads its result (pytest-xdist's recipe:
    a file in this session's shared temporary folder, under a file lock)."""
    import pickle

    from filelock import FileLock

    from helpers.data import encode_records

    if not hasattr(request.config, "workerinput"):   # not an xdist worker: nothing to share
        return encode_records(real_records, tokenizer)
    shared = tmp_path_factory.getbasetemp().parent / "real-encoded.pickle"
    with FileLock(str(shared) + ".lock"):
        if not shared.is_file():
            shared.write_bytes(pickle.dumps(encode_records(real_records, tokenizer)))
        return pickle.loads(shared.read_bytes())


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_spec) -> Path:
    from helpers.download import prepare_model

    return prepare_model(tiny_spec)


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


QLORA_CONFIG = "configs/train/tiny-qlora.yaml"

#: the libraries whose versions change what a training run produces
TRAINING_LIBRARIES = ("torch", "transformers", "peft", "accelerate", "datasets", "tokenizers", "swanlab")


def code_fingerprint(spec) -> str:
    """The spec, the training libraries' versions and every file of code and config a training run depends on."""
    from importlib.metadata import version

    digest = hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True, default=str).encode())
    digest.update(json.dumps({name: version(name) for name in TRAINING_LIBRARIES}, sort_keys=True).encode())
    files = sorted((REPO_ROOT / "helpers").glob("*.py")) + [spec.config_file, REPO_ROOT / "data" / "huanhuan_sample.json"]
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


#: where the recipes' tiny trainings are kept between sessions
TRAINED_RUNS = REPO_ROOT / "workspace" / "checkpoints"


def cached_training(spec) -> tuple:
    """``spec``'s training: (spec, run summary), trained only when no run made by exactly this code,
    config and data is in its run folder (a fingerprint of all of them is stored beside it)."""
    from filelock import FileLock

    from helpers import train

    run_dir = spec.paths.run_dir
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    stamp = run_dir / "code_fingerprint.txt"
    wanted = code_fingerprint(spec)
    with FileLock(str(run_dir.with_name(run_dir.name + ".tests-cache.lock"))):
        if not (stamp.is_file() and stamp.read_text() == wanted and (run_dir / runs.RUN_SUMMARY).is_file()):
            train.train(spec, resume=False)
            record_made(stamp)     # a file of the course's in the run folder: make reset removes it with the run
            stamp.write_text(wanted)
    return spec, runs.load_run_summary(spec)


@pytest.fixture(scope="session")
def memorised_run(tiny_model_dir):
    """The tiny profile's memorisation run (configs/train/tiny.yaml): (spec, summary)."""
    return cached_training(tiny_spec_for(TRAINED_RUNS / "tiny-memorisation"))


@pytest.fixture(scope="session")
def qlora_run(tiny_model_dir):
    """The same memorisation on the 4-bit base (configs/train/tiny-qlora.yaml): (spec, summary)."""
    return cached_training(tiny_spec_for(TRAINED_RUNS / "tiny-qlora-memorisation", config=QLORA_CONFIG))


@pytest.fixture(scope="session")
def tiny_checkpoint(memorised_run) -> Path:
    """The memorisation adapter: the final checkpoint of :func:`memorised_run`."""
    return memorised_run[1]["checkpoint"]
