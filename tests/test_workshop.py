"""The class-length recipe (configs/train/qwen3-8b-workshop.yaml) is the full recipe, shortened.

The time it takes on a 24 GB card is an estimate written in the config's comments; what can be
checked without a GPU is that the config is valid for the ``full`` profile, stays within one pass
over the real training rows, keeps the 24 GB memory recipe, and says how its estimate was made.
"""

from __future__ import annotations

import json
import math

from helpers.data_files import grouped_split
from helpers.recipes import choose_recipe
from helpers.spec import CONFIG_DIR, build_spec

WORKSHOP = CONFIG_DIR / "qwen3-8b-workshop.yaml"
ORIGINAL_SAMPLES_PER_S = 12.713
PACKED_TOKEN_SAVING = 1.45


def test_workshop_recipe_is_one_capped_pass_of_the_full_recipe(huanhuan_path):
    workshop = build_spec(WORKSHOP, env={}, settings_file=None, cuda=False)
    records = json.loads(huanhuan_path.read_text(encoding="utf-8"))
    train_rows = grouped_split(records, workshop.data.eval_fraction, workshop.data.split_seed).train
    full = build_spec(CONFIG_DIR / "qwen3-8b.yaml", env={}, settings_file=None, cuda=False)
    assert workshop.profile.name == "full"
    assert (workshop.data, workshop.lora, workshop.batching) == (full.data, full.lora, full.batching)
    t, f = workshop.training, full.training
    rows_per_step = t["per_device_train_batch_size"] * t["gradient_accumulation_steps"]
    assert rows_per_step == f["per_device_train_batch_size"] * f["gradient_accumulation_steps"] == 16
    assert t["num_train_epochs"] == 1 and t["max_steps"] <= math.ceil(len(train_rows) / rows_per_step)
    assert t["learning_rate"] > f["learning_rate"]
    # the 24 GB card's recipe from helpers/recipes.py: checkpointing, micro-batch 4
    recipe, _ = choose_recipe(24)
    assert t["activation_checkpointing"] is recipe.activation_checkpointing is True
    assert t["per_device_train_batch_size"] == recipe.micro_batch
    assert t["eval_steps"] <= t["max_steps"] and t["logging_steps"] <= 10


def test_workshop_estimate_in_the_comments_matches_the_numbers():
    spec = build_spec(WORKSHOP, env={}, settings_file=None, cuda=False)
    rows = spec.training["max_steps"] * 16
    seconds_at_original_speed = rows / ORIGINAL_SAMPLES_PER_S / PACKED_TOKEN_SAVING
    text = WORKSHOP.read_text(encoding="utf-8")
    assert "ESTIMATE" in text and "12.7 samples/s" in text
    assert f"{rows:,} / 12.7 / 1.45 = {seconds_at_original_speed:.0f} s" in text
    # 1-3x that on a 24 GB card, plus loading: inside a 15-minute slot
    assert 3 * (seconds_at_original_speed + 20) + 120 <= 15 * 60
