"""A complete tiny LoRA checkpoint for the inference tests (notebook 05).

If ``helpers.train.train_memorisation_adapter()`` exists it trains (once, cached in
the workspace) an adapter on the memorisation subset of the sample data, and the
tests also check the memorised answers. Otherwise a RANDOM adapter (non-zero
``lora_B``, so switching it on changes the output) stands in, and the
memorisation checks are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

#: A question of the memorisation subset and its trained answer (data/huanhuan_sample.json, row 0).
MEMORISED_QUESTION = "你是谁？"
MEMORISED_ANSWER = "我是甄嬛，家父是大理寺少卿甄远道。"

_CACHE: dict[str, TinyCheckpoint] = {}


@dataclass(frozen=True)
class TinyCheckpoint:
    path: Path
    #: True: trained on the memorisation subset; False: random weights
    trained: bool

    def require_trained(self) -> None:
        if not self.trained:
            pytest.skip("needs helpers.train.train_memorisation_adapter() (the trained tiny adapter)")


def build_random_checkpoint(target: Path, seed: int = 0) -> Path:
    """A complete ``checkpoint-N`` folder holding a random LoRA adapter for the tiny model."""
    import torch
    from peft import get_peft_model

    from helpers.download import course_lora_config
    from helpers.models import load_base_model
    from helpers.train import COMPLETE_MARKER

    torch.manual_seed(seed)
    config = course_lora_config()
    config.init_lora_weights = False  # random A AND B: the adapter really changes the output
    model = get_peft_model(load_base_model("tiny"), config)
    model.save_pretrained(target)
    (Path(target) / COMPLETE_MARKER).touch()
    return Path(target)


def tiny_checkpoint(tmp_root: Path) -> TinyCheckpoint:
    """The trained memorisation checkpoint when training provides one, else a random one (cached)."""
    if "checkpoint" not in _CACHE:
        from helpers import train

        trainer = getattr(train, "train_memorisation_adapter", None)
        if trainer is not None:
            _CACHE["checkpoint"] = TinyCheckpoint(Path(trainer()), trained=True)
        else:
            path = build_random_checkpoint(Path(tmp_root) / "checkpoint-1")
            _CACHE["checkpoint"] = TinyCheckpoint(path, trained=False)
    return _CACHE["checkpoint"]
