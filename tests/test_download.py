import shutil
from pathlib import Path

import pytest
import torch

from helpers import download, models, workspace
from helpers.settings import WORKSPACE_ENV
from helpers.workspace import REPO_ROOT
from tests.conftest import stand_in_weights


def test_offline_tokenizer_files_match_pinned_sha256():
    digests = models.verify_tokenizer_files()
    assert digests == models.TOKENIZER_SHA256


def test_a_changed_tokenizer_file_is_caught(tmp_path):
    for name in models.TOKENIZER_SHA256:
        shutil.copyfile(models.offline_tokenizer_dir() / name, tmp_path / name)
    with open(tmp_path / "tokenizer_config.json", "a", encoding="utf-8") as handle:
        handle.write(" ")
    with pytest.raises(models.TokenizerFilesError, match=rf"tokenizer_config\.json .*{models.TOKENIZER_SHA256['tokenizer_config.json']}"):
        models.verify_tokenizer_files(tmp_path)


def test_tiny_model_dir_loads_like_a_real_one(tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.vocab_size == 151936
    assert model.config.num_hidden_layers == download.TINY_CONFIG["num_hidden_layers"]
    assert model.generation_config.eos_token_id == [151645, 151643]
    assert len(tokenizer) == 151669
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == 151645
    ids = tokenizer("你是谁？", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 151936)
    assert torch.isfinite(logits).all()


def test_tiny_model_build_is_deterministic(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    again = download.build_tiny_model(tmp_path / "tiny", overwrite=True)
    a = load_file(tiny_model_dir / "model.safetensors")
    b = load_file(again / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "tiny.partial").exists()


def test_qwen3_8b_lora_parameter_line_is_exact(capsys):
    from peft import get_peft_model

    get_peft_model(models.qwen3_on_meta(), models.lora_config()).print_trainable_parameters()
    assert capsys.readouterr().out.strip() == "trainable params: 21,823,488 || all params: 8,212,558,848 || trainable%: 0.2657"


def test_meta_model_uses_no_memory_and_has_real_shapes():
    model = models.qwen3_on_meta()
    assert all(p.device.type == "meta" for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == 8_190_735_360
    layer = model.model.layers[0]
    assert tuple(layer.self_attn.k_proj.weight.shape) == (1024, 4096)
    assert tuple(layer.mlp.down_proj.weight.shape) == (4096, 12288)


def test_disk_check_refuses_with_a_fix(tmp_path):
    with pytest.raises(workspace.NotEnoughDiskError, match="helpers.environment setup --workspace ~/autodl-tmp/"):
        workspace.check_disk_space(10**9, tmp_path)


def test_the_downloads_disk_fix_also_unsets_a_workspace_variable(tmp_path, monkeypatch):
    """`setup --workspace` writes the settings file, which QWEN3_TUTORIAL_WORKSPACE beats: the fix says to unset it."""
    monkeypatch.setattr(workspace, "free_disk_gb", lambda path: 1.0)
    monkeypatch.delenv(WORKSPACE_ENV, raising=False)
    with pytest.raises(workspace.NotEnoughDiskError) as plain:
        download.download_folder(tmp_path / "Qwen3-8B", tmp_path)
    assert "setup --workspace" in str(plain.value) and "unset" not in str(plain.value)
    monkeypatch.setenv(WORKSPACE_ENV, str(tmp_path))
    with pytest.raises(workspace.NotEnoughDiskError, match=f"setup --workspace .*unset {WORKSPACE_ENV}"):
        download.download_folder(tmp_path / "Qwen3-8B", tmp_path)


def test_the_download_budgets_for_checkpoints_and_the_merged_export(tmp_path, monkeypatch):
    budget = download.disk_budget_gb()
    total = download.BUDGET_TOTAL
    assert budget["合并导出的模型"] == budget["Qwen3-8B 权重（bf16 safetensors）"] == 16.4
    assert budget[total] > 2 * 16.4 + budget["检查点（保留 3 个 × 最多 3 次运行）"]
    assert download.disk_budget_gb(model_present=True)[total] == pytest.approx(budget[total] - 16.4)
    monkeypatch.setattr(workspace, "free_disk_gb", lambda path: 30.0)  # room for the model, not for its export
    with pytest.raises(workspace.NotEnoughDiskError, match=f"30.0 GB.* {budget[total]:.1f} GB"):
        download.download_qwen3(tmp_path / "Qwen3-8B", tmp_path)


def test_offline_download_fails_with_actionable_message(monkeypatch, tmp_path):
    import modelscope

    def no_network(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'www.modelscope.cn'")

    monkeypatch.setattr(modelscope, "snapshot_download", no_network)
    monkeypatch.setattr(download, "check_disk_space", lambda *a, **k: 100.0)
    with pytest.raises(download.DownloadError, match="QWEN3_TUTORIAL_MODEL_DIR") as error:
        download.download_qwen3(tmp_path / "Qwen3-8B", tmp_path)
    # the way to tiny works pasted after `download --profile full` (a variable would lose to the flag)
    assert "python -m helpers.download --profile tiny" in str(error.value)


def test_download_cli_prepares_the_profiles_model_in_an_empty_workspace(tmp_path, monkeypatch, capsys, huanhuan_path):
    monkeypatch.setenv("QWEN3_TUTORIAL_WORKSPACE", str(tmp_path))
    monkeypatch.setenv("QWEN3_TUTORIAL_DATASET", str(huanhuan_path))  # no network here: a local copy of the dataset
    monkeypatch.delenv("QWEN3_TUTORIAL_PROFILE", raising=False)
    assert download.main(["--profile", "random8b"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()   # the dataset's line, then the model directory's: each ends with its path
    assert "[档位] random8b" in out and lines[-1].endswith(workspace.display_path(tmp_path / "models" / "Qwen3-8B-random"))
    assert lines[-2].endswith(workspace.display_path(huanhuan_path))
    assert (tmp_path / "models" / "Qwen3-8B-random" / "config.json").is_file()
    assert download.main(["--profile", "huge"]) == 2
    assert "--profile='huge'" in (err := capsys.readouterr().err) and "full、small、tiny、random8b、auto" in err


def test_random8b_dir_has_the_real_config(tmp_path):
    from transformers import AutoConfig

    path = download.write_config_dir(tmp_path / "r8b")
    config = AutoConfig.from_pretrained(path)
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (4096, 36, 12288)
    with torch.device("meta"):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == 8_190_735_360


def test_the_tiny_model_is_never_built_over_another_model(tmp_path):
    other = workspace.course_folder(tmp_path / "Qwen3-8B")   # a downloaded model: course-made, no model.safetensors
    (other / "config.json").write_text("{}", encoding="utf-8")
    (other / "model-00001-of-00005.safetensors").write_bytes(b"weights")
    with pytest.raises(workspace.UnsafeWriteError, match=r"Qwen3-8B .*config\.json"):
        download.build_tiny_model(other)
    assert sorted(p.name for p in other.iterdir()) == [".course-made", "config.json", "model-00001-of-00005.safetensors"]


def test_an_interrupted_download_is_not_a_model(tmp_path):
    """ModelScope moves each finished file into place: config.json and some shards are there before the rest."""
    import json

    folder = tmp_path / "Qwen3-8B"
    folder.mkdir()
    (folder / "config.json").write_text("{}", encoding="utf-8")
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"w")
    assert not download.weights_present(folder)                   # the index has not arrived yet
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}), encoding="utf-8")
    assert not download.weights_present(folder)                   # one shard of two
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"w")
    assert not download.weights_present(folder)                   # a shard that is not whole
    stand_in_weights(folder / "model-00001-of-00002.safetensors")
    stand_in_weights(folder / "model-00002-of-00002.safetensors")
    assert download.weights_present(folder)
    (folder / "model.safetensors.index.json").write_text('{"weight_map": {"a": "model-0', encoding="utf-8")
    assert not download.weights_present(folder)                   # a half-written index


def test_a_model_folder_with_missing_shards_is_refused_before_loading(tmp_path):
    """The learner's own folder (QWEN3_TUTORIAL_MODEL_DIR) or the course's, cut short: one error naming the missing
    weights, from the download and from whatever loads the model, not from_pretrained's FileNotFoundError."""
    import json

    from helpers.spec import build_spec

    own = tmp_path / "my-qwen3"
    own.mkdir()
    (own / "config.json").write_text(json.dumps(models.qwen3_config("Qwen3-8B")), encoding="utf-8")
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    (own / "model.safetensors.index.json").write_text(json.dumps({"weight_map": dict(zip("ab", shards, strict=True))}),
                                                      encoding="utf-8")
    (own / shards[0]).write_bytes(b"w")
    download.copy_tokenizer_files(own)
    given = build_spec(profile="full", env={"QWEN3_TUTORIAL_MODEL_DIR": str(own),
                                           "QWEN3_TUTORIAL_WORKSPACE": str(tmp_path / "ws")}, settings_file=None)
    for step in (download.prepare_model, models.require_model_dir):
        with pytest.raises(workspace.MissingArtifactError, match="权重不全"):
            step(given)
    course = build_spec(profile="full", env={"QWEN3_TUTORIAL_WORKSPACE": str(tmp_path / "ws")}, settings_file=None)
    shutil.copytree(own, course.paths.model_dir)
    with pytest.raises(workspace.MissingArtifactError, match="权重不全.*python -m helpers.download --profile full"):
        models.require_model_dir(course)          # what training and inference call before from_pretrained
    # notebooks 02 and 03 need only the tokenizer: a download cut short serves them, a folder without one does not
    assert models.require_model_dir(course, weights=False) == course.paths.model_dir
    (course.paths.model_dir / "tokenizer.json").unlink()
    with pytest.raises(workspace.MissingArtifactError, match="权重不全.*tokenizer.json"):
        models.require_model_dir(course, weights=False)
    (own / shards[1]).write_bytes(b"w")
    with pytest.raises(workspace.MissingArtifactError, match="权重不全"):   # every shard there, none whole
        download.prepare_model(given)
    for shard in shards:
        stand_in_weights(own / shard)
    assert download.prepare_model(given) == own


def test_the_model_folder_is_ready_only_when_complete(tmp_path):
    """What the other processes of a launch wait for: not config.json alone (it arrives first in a download)."""
    import json

    from helpers.spec import build_spec

    for profile in ("full", "random8b", "tiny"):
        spec = build_spec(profile=profile, env={"QWEN3_TUTORIAL_WORKSPACE": str(tmp_path / profile)},
                          settings_file=None, cuda=True)
        folder = spec.paths.model_dir
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}", encoding="utf-8")
        assert not download.model_ready(spec), profile
    full = build_spec(profile="full", env={"QWEN3_TUTORIAL_WORKSPACE": str(tmp_path / "full")}, settings_file=None,
                      cuda=True).paths.model_dir
    (full / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "m-1.safetensors"}}))
    stand_in_weights(full / "m-1.safetensors")
    spec = build_spec(profile="full", env={"QWEN3_TUTORIAL_WORKSPACE": str(tmp_path / "full")}, settings_file=None,
                      cuda=True)
    assert not download.model_ready(spec)                        # the weights, but no tokenizer yet
    for name in download.TOKENIZER_FILES[:2]:
        (full / name).write_text("{}", encoding="utf-8")
    assert download.model_ready(spec)
    written = build_spec(profile="random8b", env={"QWEN3_TUTORIAL_WORKSPACE": str(tmp_path / "r")},
                         settings_file=None, cuda=True)
    download.prepare_model(written)
    assert download.model_ready(written)
    before = (written.paths.model_dir / "config.json").stat().st_mtime_ns
    download.prepare_model(written)                              # once written, never rewritten under a reader
    assert (written.paths.model_dir / "config.json").stat().st_mtime_ns == before


def test_the_notebook_download_cell_leaves_a_folder_that_reset_all_removes(tmp_path, monkeypatch):
    """Notebook 01's own cell (snapshot_download written out), with ModelScope faked: the model folder it
    leaves is marked as the course's, so `make reset-all` removes it and `make reset` keeps it."""
    import json

    import modelscope

    from helpers import reset
    from helpers.spec import build_spec

    def fake_snapshot_download(model_id, local_dir, revision):
        folder = Path(local_dir)
        folder.mkdir(parents=True, exist_ok=True)   # as ModelScope does: it does not need the folder to exist
        for name in ("config.json", *download.TOKENIZER_FILES):
            (folder / name).write_text("{}", encoding="utf-8")
        stand_in_weights(folder / "model.safetensors")
        return str(folder)

    monkeypatch.setattr(modelscope, "snapshot_download", fake_snapshot_download)
    monkeypatch.setattr(download, "check_disk_space", lambda *a, **k: 100.0)
    notebook = json.loads((REPO_ROOT / "notebooks" / "01-download.ipynb").read_text(encoding="utf-8"))
    cell = next("".join(c["source"]) for c in notebook["cells"]
                if c["cell_type"] == "code" and "snapshot_download(" in "".join(c["source"]))
    spec = build_spec(profile="small", env={"QWEN3_TUTORIAL_WORKSPACE": str(tmp_path)}, settings_file=None, cuda=False)
    exec(cell, {"spec": spec, "download": download, "snapshot_download": modelscope.snapshot_download,
                "display_path": workspace.display_path, "print": lambda *a, **k: None})
    model_dir = tmp_path / "models" / "modelscope" / "Qwen" / "Qwen3-0.6B"
    assert download.weights_present(model_dir)
    assert any(model_dir.is_relative_to(item.path) for item in reset.plan(tmp_path, everything=True))
    assert not any(model_dir.is_relative_to(item.path) or item.path.is_relative_to(model_dir)
                   for item in reset.plan(tmp_path))


def test_a_model_folder_that_lost_its_config_is_named_so_and_the_fix_repairs_it(tmp_path, tiny_model_dir):
    """A tiny model folder without config.json: the error says what is missing (not "does not exist"), and the
    command it gives rebuilds the folder (it used to answer "ready" and repair nothing)."""
    import shutil

    from helpers.models import require_model_dir
    from helpers.spec import build_spec

    spec = build_spec(profile="tiny", env={"QWEN3_TUTORIAL_WORKSPACE": str(tmp_path)}, settings_file=None)
    shutil.copytree(tiny_model_dir, spec.paths.model_dir)
    (spec.paths.model_dir / "config.json").unlink()
    assert not download.model_ready(spec)
    with pytest.raises(workspace.MissingArtifactError, match=r"里没有 config\.json.*helpers\.download --profile tiny"):
        require_model_dir(spec)
    download.prepare_model(spec)
    assert require_model_dir(spec) == spec.paths.model_dir and download.model_ready(spec)
