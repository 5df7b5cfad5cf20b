"""Workshop tooling: the class-length recipe and skipping ahead with someone else's adapter.

* configs/train/qwen3-8b-workshop.yaml is the full recipe, shortened. The time it takes on a 24 GB
  card is an estimate written in its comments; what can be checked without a GPU is that it is valid
  for the ``full`` profile, stays within one pass over the real training rows, keeps the 24 GB memory
  recipe, and that its comments' arithmetic matches its numbers.
* A learner whose training failed continues with a classmate's adapter, named in the settings file
  or ``QWEN3_TUTORIAL_ADAPTER_DIR``; an adapter made for another base model is refused, naming both.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from helpers import inference as inf
from helpers import models, recipes
from helpers.checkpoints import COMPLETE_MARKER
from helpers.data_files import grouped_split
from helpers.environment import write_settings
from helpers.settings import ADAPTER_DIR_ENV
from helpers.spec import CONFIG_DIR, build_spec
from helpers.workspace import MissingArtifactError, display_path, shell_path
from tests.memorised import MEMORISED_ANSWER, MEMORISED_QUESTION

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
    recipe = recipes.choose(24).recipe
    assert t["activation_checkpointing"] is recipe.activation_checkpointing is True
    assert t["per_device_train_batch_size"] == recipe.micro_batch
    assert t["eval_steps"] <= t["max_steps"] and t["logging_steps"] <= 10


def test_workshop_estimate_in_the_comments_matches_the_numbers():
    spec = build_spec(WORKSHOP, env={}, settings_file=None, cuda=False)
    rows = spec.training["max_steps"] * 16
    text = WORKSHOP.read_text(encoding="utf-8")
    # measured on an H200 (4.7 samples/s for this shape, the recipe table's measurement), estimated up to the
    # original's 12.7 samples/s
    measured = recipes.load_measurements()["bf16_ckpt_mb4"].samples_per_s
    assert "H200" in text and f"估算为 {measured}-12.7 samples/s" in text
    fastest, slowest = rows / ORIGINAL_SAMPLES_PER_S / 60, rows / measured / 60
    assert f"约 {fastest:.0f}-{slowest:.0f} 分钟" in text
    # plus loading the model (up to 2 minutes) and two evaluations: inside a 15-minute slot
    assert slowest + 2 + 1 <= 15


# --------------------------------------------------------------------------- skip ahead with a classmate's adapter


def classmates_adapter(tiny_checkpoint, tmp_path) -> Path:
    """The memorisation adapter, copied as a learner gets it from a classmate (outside their workspace)."""
    target = tmp_path / "from-a-classmate" / "checkpoint-final"
    shutil.copytree(tiny_checkpoint, target)
    return target


def test_a_classmates_adapter_from_the_settings_file_is_loaded(tiny_checkpoint, tiny_model_dir, tmp_path):
    adapter = classmates_adapter(tiny_checkpoint, tmp_path)
    workspace = tmp_path / "workspace"           # the model is there, no run of this learner's own
    (workspace / "models").mkdir(parents=True)
    (workspace / "models" / tiny_model_dir.name).symlink_to(tiny_model_dir, target_is_directory=True)
    settings = tmp_path / "course-settings.yaml"
    write_settings({"profile": "tiny", "workspace": str(workspace), "adapter_dir": str(adapter)}, path=settings)
    spec = build_spec(settings_file=settings, env={}, cuda=False)
    assert spec.paths.adapter_dir == adapter
    assert not spec.paths.run_dir.exists()        # this learner's own training never ran
    loaded = inf.load_finetuned(spec)
    assert loaded.checkpoint == adapter
    reply = inf.generate(loaded.model, loaded.tokenizer, inf.chat_messages([], MEMORISED_QUESTION),
                         inf.greedy_settings())
    assert reply.content == MEMORISED_ANSWER


def test_the_variable_beats_the_settings_file_for_the_adapter(tiny_checkpoint, tmp_path):
    adapter = classmates_adapter(tiny_checkpoint, tmp_path)
    settings = tmp_path / "course-settings.yaml"
    write_settings({"adapter_dir": str(tmp_path / "stale")}, path=settings)
    spec = build_spec(settings_file=settings, env={ADAPTER_DIR_ENV: str(adapter)}, profile="tiny", cuda=False)
    assert spec.paths.adapter_dir == adapter
    assert inf.resolve_checkpoint(spec) == (adapter, [])


def foreign_adapter(tiny_checkpoint, tmp_path, change) -> Path:
    """A classmate's adapter whose weights ``change`` rewrites, copied by hand (no completion proof)."""
    from safetensors.torch import load_file, save_file

    adapter = classmates_adapter(tiny_checkpoint, tmp_path)
    save_file(change(load_file(adapter / "adapter_model.safetensors")), adapter / "adapter_model.safetensors")
    (adapter / COMPLETE_MARKER).unlink(missing_ok=True)
    return adapter


def wider(weights: dict) -> dict:
    """What an adapter trained on Qwen3-8B looks like: LoRA A matrices read 4,096 inputs."""
    return {k: (torch.zeros(v.shape[0], 4096) if "lora_A" in k else v) for k, v in weights.items()}


def deeper(weights: dict) -> dict:
    """An adapter for a model with more layers than the tiny one (same width)."""
    extra = {k.replace("layers.0.", "layers.40."): v.clone() for k, v in weights.items() if "layers.0." in k}
    return {**weights, **extra}


def other_mlp(weights: dict) -> dict:
    """An adapter for a model of the same width with another MLP size (as Llama-3-8B is to Qwen3-8B)."""
    return {k: (torch.zeros(v.shape[0], 999) if "down_proj.lora_A" in k else v) for k, v in weights.items()}


@pytest.mark.parametrize(("change", "sizes", "problem"), [
    (wider, "hidden_size：适配器 4096，基座模型 128", r"输入维度\D+384\D+lora_A\D+4096"),   # both widths, then the layer
    (deeper, "基座模型的 hidden_size=128", re.escape("model.layers.40.")),
    (other_mlp, "基座模型的 hidden_size=128", r"down_proj 的输入维度\D+384\D+lora_A\D+999"),   # equal widths: not a cause
])
def test_an_adapter_for_another_base_model_is_refused_naming_the_layer(tiny_checkpoint, tmp_path, change, sizes,
                                                                        problem):
    adapter = foreign_adapter(tiny_checkpoint, tmp_path, change)
    spec = build_spec(profile="tiny", env={ADAPTER_DIR_ENV: str(adapter)}, settings_file=None, cuda=False)
    pattern = rf"{sizes}\W.*profile 'tiny'.*{problem}"
    with pytest.raises(models.AdapterMismatchError, match=pattern) as error:
        inf.load_finetuned(spec)
    assert "setup --profile tiny" in str(error.value)   # a command that exists (inference has no --profile flag)


def test_export_refuses_an_adapter_for_another_base_and_keeps_the_old_export(tiny_checkpoint, tiny_spec, tmp_path):
    from helpers.export import export_merged

    target = export_merged(tiny_spec, checkpoint=tiny_checkpoint, target=tmp_path / "merged")
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    adapter = foreign_adapter(tiny_checkpoint, tmp_path, wider)
    with pytest.raises(models.AdapterMismatchError, match=r"down_proj\D+384\D+4096"):
        export_merged(tiny_spec, checkpoint=adapter, target=target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before


def test_the_two_adapter_files_in_a_folder_named_checkpoint_n_are_loaded(tiny_checkpoint, tmp_path):
    """teaching.md section 8: the teacher hands over adapter_config.json + adapter_model.safetensors; kept in a
    folder still named checkpoint-60 they are loaded (a note says so), unless the weights were cut short."""
    from helpers.checkpoints import CheckpointError

    handed = tmp_path / "teacher-adapter" / "checkpoint-60"
    handed.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copyfile(tiny_checkpoint / name, handed / name)
    spec = build_spec(profile="tiny", env={ADAPTER_DIR_ENV: str(handed)}, settings_file=None, cuda=False)
    path, notes = inf.resolve_checkpoint(spec)
    assert path == handed and len(notes) == 1 and "checkpoint_complete" in notes[0]
    weights = (handed / "adapter_model.safetensors").read_bytes()
    (handed / "adapter_model.safetensors").write_bytes(weights[: len(weights) // 2])    # a copy cut short
    with pytest.raises(CheckpointError, match=r"checkpoint-60 .*checkpoint_complete"):
        inf.resolve_checkpoint(spec)
    archive = shutil.make_archive(str(tmp_path / "teacher-adapter"), "zip", tmp_path / "teacher-adapter")
    zipped = build_spec(profile="tiny", env={ADAPTER_DIR_ENV: archive}, settings_file=None, cuda=False)
    with pytest.raises(MissingArtifactError, match=r"teacher-adapter\.zip\W.*unzip.*adapter_config\.json"):
        inf.resolve_checkpoint(zipped)


def test_a_stale_adapter_setting_is_visible_and_named_with_its_fix(tmp_path):
    """After a class the settings file may still name the teacher's adapter: every spec report shows it, and
    once that folder is gone the error names the setting and how to drop it."""
    gone = tmp_path / "teacher-adapter"
    settings = tmp_path / "course-settings.yaml"
    write_settings({"adapter_dir": str(gone)}, path=settings)
    spec = build_spec(profile="tiny", settings_file=settings, env={}, cuda=False)
    assert str(gone) in spec.describe() and "--adapter-dir" in spec.describe()
    with pytest.raises(MissingArtifactError, match=r"adapter_dir\W+来自 设置文件 [^，]*）不存在.*setup --adapter-dir"):
        inf.resolve_checkpoint(spec)
    write_settings({"adapter_dir": "teacher-adapter"}, path=settings)   # typed by hand: read from the repository root
    relative = build_spec(profile="tiny", settings_file=settings, env={}, cuda=False)
    with pytest.raises(MissingArtifactError, match=r"adapter_dir\W+来自 设置文件 .*相对路径从仓库根目录算起）不存在"):
        inf.resolve_checkpoint(relative)
    with pytest.raises(MissingArtifactError, match=r"typo 不存在。$"):     # --checkpoint: the learner's own word
        inf.resolve_checkpoint(spec, tmp_path / "typo")
    # without an adapter setting, a wrong --checkpoint names where this run's checkpoints are
    plain = build_spec(profile="tiny", settings_file=None, env={}, cuda=False)
    with pytest.raises(MissingArtifactError, match=re.escape(f"typo 不存在。这次运行的检查点在 {display_path(plain.paths.run_dir)}")):
        inf.resolve_checkpoint(plain, tmp_path / "typo")
    # a run folder of the learner's with no checkpoint yet: the fix trains into that folder
    empty_run = tmp_path / "myrun"
    empty_run.mkdir()
    with pytest.raises(MissingArtifactError, match=re.escape(f"--output-dir {shell_path(empty_run)}")):
        inf.resolve_checkpoint(plain.with_run_dir(empty_run))
    # a merged export given as an adapter: it is a whole model, loaded with from_pretrained
    (empty_run / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(MissingArtifactError, match="from_pretrained"):
        inf.resolve_checkpoint(plain, empty_run)


def test_a_checkpoint_path_the_course_printed_works_from_a_notebook_and_elsewhere(tiny_checkpoint, tiny_spec,
                                                                                 tmp_path, monkeypatch):
    from helpers.workspace import REPO_ROOT, display_path

    printed = display_path(tiny_checkpoint)   # relative to the repository, as every message prints it
    assert not Path(printed).is_absolute()
    for folder in (REPO_ROOT / "notebooks", tmp_path):   # a notebook's working directory; a terminal elsewhere
        monkeypatch.chdir(folder)
        assert inf.resolve_checkpoint(tiny_spec, printed) == (tiny_checkpoint, [])
    (tmp_path / printed).mkdir(parents=True)   # a folder of that name in the working directory is the one meant
    with pytest.raises(MissingArtifactError):
        inf.resolve_checkpoint(tiny_spec, printed)


def test_the_run_folder_train_printed_answers_from_another_folder(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    from helpers.workspace import display_path

    monkeypatch.chdir(tmp_path)
    printed = display_path(tiny_checkpoint.parent)   # "checkpoints / 检查点目录" of the run summary
    assert inf.main(["ask", MEMORISED_QUESTION, "--output-dir", printed, "--max-new-tokens", "2"]) == 0
    assert display_path(tiny_checkpoint) in capsys.readouterr().out
