"""The run spec: one precedence rule, typed and validated configs, every path resolved once.

Every spec here is built from an explicit environment and settings file (never the developer's
own), with ``cuda=`` fixed, so the rule is tested independently of the machine.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from helpers import settings as course_settings_module
from helpers import spec as specs
from helpers.profiles import PROFILES
from helpers.settings import SpecError
from helpers.spec import build_spec
from helpers.workspace import REPO_ROOT, MissingArtifactError, display_path
from tests.conftest import stand_in_weights

TINY = "configs/train/tiny.yaml"
FULL = "configs/train/qwen3-8b.yaml"


def spec_of(config=None, overrides=(), *, env=None, settings=None, cuda=False, **kwargs):
    return build_spec(config, overrides, env=env or {}, settings_file=settings, cuda=cuda, **kwargs)


def write_config(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- the precedence rule


@pytest.mark.parametrize("cuda", [False, True])
@pytest.mark.parametrize("variable", [None, "auto"])
def test_the_yaml_profile_is_authoritative_for_its_file(cuda, variable):
    env = {course_settings_module.PROFILE_ENV: variable} if variable else {}
    assert spec_of(TINY, env=env, cuda=cuda).profile.name == "tiny"
    full = spec_of(FULL, env=env, cuda=cuda)
    assert full.profile.name == "full", "qwen3-8b.yaml says full, also on a CPU machine"
    assert "configs/train/qwen3-8b.yaml" in full.origin["profile"]
    assert full.training["learning_rate"] == 1e-4


@pytest.mark.parametrize(("name", "config"), [("tiny", "tiny.yaml"), ("full", "qwen3-8b.yaml"),
                                              ("random8b", "qwen3-8b.yaml")])
def test_the_variable_chooses_the_config_when_none_is_given(name, config):
    spec = spec_of(env={course_settings_module.PROFILE_ENV: name}, cuda=False)
    assert spec.profile.name == name
    assert spec.config_file == REPO_ROOT / "configs" / "train" / config
    assert course_settings_module.PROFILE_ENV in spec.origin["profile"]


@pytest.mark.parametrize(("cuda", "expected", "config"), [(False, "tiny", "tiny.yaml"), (True, "full", "qwen3-8b.yaml")])
@pytest.mark.parametrize("variable", [None, "auto", " AUTO "])
def test_auto_picks_by_the_gpu_when_no_config_is_given(cuda, expected, config, variable):
    env = {course_settings_module.PROFILE_ENV: variable} if variable else {}
    spec = spec_of(env=env, cuda=cuda)
    assert spec.profile.name == expected and spec.config_file.name == config
    assert spec.origin["profile"].startswith("auto: ")
    assert ("没有 CUDA GPU" in spec.origin["profile"]) is not cuda


def test_a_contradiction_stops_naming_both_and_the_fix():
    # the old bug: the variable silently overrode the file and trained Qwen3-8B with tiny's lr 5e-3
    with pytest.raises(SpecError) as caught:
        spec_of(TINY, env={course_settings_module.PROFILE_ENV: "full"})
    message = str(caught.value)
    assert f"{course_settings_module.PROFILE_ENV}=full" in message and "configs/train/tiny.yaml" in message
    assert "profile: tiny" in message
    assert "configs/train/qwen3-8b.yaml" in message
    assert message.count(course_settings_module.PROFILE_ENV) == 2, "the fix names the variable to unset"

    with pytest.raises(SpecError) as caught:
        spec_of(FULL, env={course_settings_module.PROFILE_ENV: "tiny"})
    message = str(caught.value)
    assert f"{course_settings_module.PROFILE_ENV}=tiny" in message and "configs/train/qwen3-8b.yaml" in message
    assert "profile: full" in message and "configs/train/tiny.yaml" in message


def test_a_contradiction_from_the_command_line_flag_names_the_flag():
    with pytest.raises(SpecError, match=r"--profile=tiny .*configs/train/qwen3-8b\.yaml.*profile: full"):
        spec_of(FULL, profile="tiny")


def test_random8b_may_run_the_full_recipe_but_not_the_tiny_one():
    spec = spec_of(FULL, env={course_settings_module.PROFILE_ENV: "random8b"})
    assert spec.profile.name == "random8b"
    assert dict(spec.training) == dict(spec_of(FULL).training), "the same numbers as the full recipe"
    assert "random8b" in spec.origin["profile"] and "full" in spec.origin["profile"]
    assert spec.paths.model_dir.name == PROFILES["random8b"].model_dirname
    with pytest.raises(SpecError, match=rf"{course_settings_module.PROFILE_ENV}=random8b .*tiny\.yaml.*profile: tiny"):
        spec_of(TINY, env={course_settings_module.PROFILE_ENV: "random8b"})


def test_an_unknown_profile_name_lists_the_choices(tmp_path):
    with pytest.raises(SpecError, match=r"PROFILE='huge'.*full、small、tiny、random8b、auto"):
        spec_of(env={course_settings_module.PROFILE_ENV: "huge"})
    with pytest.raises(SpecError, match=r"config\.yaml.*profile 'huge'.*full、small、tiny、random8b"):
        spec_of(write_config(tmp_path, "profile: huge\n"))


def test_an_override_cannot_sneak_past_the_rule():
    with pytest.raises(SpecError, match=rf"{course_settings_module.PROFILE_ENV}=tiny .*tiny\.yaml.*profile: full"):
        spec_of(TINY, ["profile=full"], env={course_settings_module.PROFILE_ENV: "tiny"})


# --------------------------------------------------------------------------- settings file and environment


def test_the_settings_file_reaches_the_spec_and_the_environment_beats_it(tmp_path):
    settings = write_config(tmp_path, f"profile: full\nworkspace: {tmp_path / 'from-file'}\n", "course-settings.yaml")
    spec = spec_of(settings=settings)
    assert spec.profile.name == "full" and spec.config_file.name == "qwen3-8b.yaml"
    assert spec.paths.workspace == (tmp_path / "from-file").resolve()
    assert "course-settings.yaml" in spec.origin["workspace"]
    assert "course-settings.yaml" in spec.origin["profile"]

    env = {course_settings_module.PROFILE_ENV: "tiny", course_settings_module.WORKSPACE_ENV: str(tmp_path / "from-env")}
    spec = spec_of(env=env, settings=settings)
    assert spec.profile.name == "tiny"
    assert spec.paths.workspace == (tmp_path / "from-env").resolve()
    assert spec.origin["workspace"] == f"环境变量 {course_settings_module.WORKSPACE_ENV}"
    # a blank variable does not count: the file's value stays
    assert spec_of(env={course_settings_module.WORKSPACE_ENV: "  "}, settings=settings).paths.workspace == \
        (tmp_path / "from-file").resolve()
    # a relative path is read from the repository root, not from where the command runs: the origin says so
    relative = spec_of(env={course_settings_module.DATASET_ENV: "huanhuan.json"}, settings=settings)
    assert relative.paths.dataset == REPO_ROOT / "huanhuan.json"
    assert relative.origin["dataset"] == f"环境变量 {course_settings_module.DATASET_ENV}，相对路径从仓库根目录算起"


def test_a_profile_from_the_settings_file_contradicting_a_config_names_the_file(tmp_path):
    settings = write_config(tmp_path, "profile: tiny\n", "course-settings.yaml")
    with pytest.raises(SpecError, match=r"course-settings\.yaml.*profile=tiny .*qwen3-8b\.yaml.*profile: full"):
        spec_of(FULL, settings=settings)


def test_the_settings_file_refuses_unknown_keys_with_a_suggestion(tmp_path):
    settings = write_config(tmp_path, "workspce: /tmp/x\n", "course-settings.yaml")
    with pytest.raises(SpecError, match=r"'workspce'.*'workspace'.*profile, workspace, model_dir"):
        spec_of(settings=settings)
    write_config(tmp_path, "profile: [tiny\n", "course-settings.yaml")
    with pytest.raises(SpecError, match="不是有效的 YAML"):
        spec_of(settings=settings)



def test_a_python_without_pyyaml_names_a_fix_that_works(tmp_path, monkeypatch):
    """`make reset` may run on the system python3: without PyYAML, the fix is the venv or moving the file away
    (the file is read even when every value comes from the environment)."""
    settings = write_config(tmp_path, "profile: tiny\n", "course-settings.yaml")
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(SpecError, match=r"PyYAML.*make venv.*移走") as caught:
        course_settings_module.read_settings_file(settings)
    assert "\n" not in str(caught.value)
    settings.unlink()
    assert course_settings_module.read_settings_file(settings) == {}   # the fix: no file, nothing to read
# --------------------------------------------------------------------------- config validation


@pytest.mark.parametrize(("text", "dotted", "suggestion"), [
    ("training:\n  learning_rat: 1.0e-4\n", "training.learning_rat", "learning_rate"),
    ("data:\n  max_lenght: 512\n", "data.max_lenght", "max_length"),
    ("lora:\n  lora_alfa: 16\n", "lora.lora_alfa", "lora_alpha"),
    ("swanlab:\n  projct: x\n", "swanlab.projct", "project"),
    ("lorra:\n  r: 8\n", "'lorra'", "lora"),
])
def test_unknown_keys_stop_with_their_dotted_name_and_a_suggestion(tmp_path, text, dotted, suggestion):
    path = write_config(tmp_path, "profile: tiny\n" + text)
    with pytest.raises(SpecError) as caught:
        spec_of(path)
    message = str(caught.value)
    assert dotted in message and repr(suggestion) in message   # the key and the suggestion
    assert path.name in message


@pytest.mark.parametrize(("override", "expected"), [
    ("data.max_length=long", ("data.max_length 应当是整数", "'long'")),
    ("data.max_length=12.5", ("data.max_length 应当是整数", "12.5")),
    ("training.bf16=maybe", ("training.bf16 应当是", "true", "false", "'maybe'")),
    ("training.num_train_epochs=three", ("training.num_train_epochs 应当是有限的数字", "'three'")),
    # 1e999 is infinity in YAML and Python: it passed "> 0" and crashed inside the Trainer; nan too wherever no range
    ("training.num_train_epochs=1e999", ("training.num_train_epochs 应当是有限的数字", "1e999")),
    ("training.num_train_epochs=1e308", ("training.num_train_epochs", "最多 10000")),
    ("training.seed=" + "9" * 400, ("training.seed 应当是整数",)),
    ("training.weight_decay=.inf", ("training.weight_decay 应当是有限的数字", "inf")),
    ("training.max_grad_norm=nan", ("training.max_grad_norm 应当是有限的数字", "nan")),
    ("training.per_device_train_batch_size=true", ("training.per_device_train_batch_size 应当是整数", "True")),
    ("lora.target_modules=q_proj", ("lora.target_modules 应当是", "列表")),
    ("batching=sorted", ("batching", "packed, padded, grouped", "'sorted'")),
    ("quantization=int8", ("quantization", "null", "nf4", "'int8'")),
    # TrainingArguments' own keys that the course decides elsewhere (they crashed inside TrainingArguments / the Trainer)
    ("training.output_dir=runs/x", ("training.output_dir", "--output-dir")),
    ("training.report_to=wandb", ("training.report_to", "'wandb'", "swanlab")),
])
def test_wrong_types_stop_with_the_dotted_name(override, expected):
    with pytest.raises(SpecError) as caught:
        spec_of(TINY, [override])
    for words in expected:
        assert words in str(caught.value)


def test_report_to_none_still_turns_every_tracker_off():
    assert spec_of(TINY, ["training.report_to=none"]).training["report_to"] == "none"


def test_numbers_written_as_yaml_text_become_numbers(tmp_path):
    # YAML 1.1 (PyYAML) reads 1e-4 without a dot as the string "1e-4"
    import yaml

    config = yaml.safe_load((REPO_ROOT / TINY).read_text(encoding="utf-8"))
    config["training"].update(learning_rate="1e-4", max_steps="20")
    config["data"]["max_length"] = "5e2"
    text = yaml.safe_dump(config, allow_unicode=True).replace("'1e-4'", "1e-4")
    path = write_config(tmp_path, text)
    assert yaml.safe_load(path.read_text())["training"]["learning_rate"] == "1e-4"
    spec = spec_of(path)
    assert spec.training["learning_rate"] == 1e-4 and isinstance(spec.training["learning_rate"], float)
    assert spec.training["max_steps"] == 20 and isinstance(spec.training["max_steps"], int)
    assert spec.data.max_length == 500 and isinstance(spec.data.max_length, int)
    override = spec_of(TINY, ["training.learning_rate=2e-4"])
    assert override.training["learning_rate"] == 2e-4 and isinstance(override.training["learning_rate"], float)


@pytest.mark.parametrize(("override", "expected"), [
    ("training.learning_rate=5", "training.learning_rate=5 必须在 0 和 1 之间"),
    ("data.eval_fraction=1.5", "data.eval_fraction=1.5 必须在 0 和 1 之间"),
    ("data.max_length=0", "data.max_length=0 必须至少为 1"),
    ("lora.r=0", "lora.r=0 必须至少为 1"),
    ("lora.lora_dropout=1", "lora.lora_dropout=1 必须在 0 和 1 之间"),
    ("training.gradient_accumulation_steps=0", "training.gradient_accumulation_steps=0 必须至少为 1"),
    ("data.max_rows=0", "data.max_rows=0 必须至少为 1，或者为 null"),
])
def test_values_out_of_range_stop_with_the_dotted_name(override, expected):
    with pytest.raises(SpecError) as caught:
        spec_of(TINY, [override])
    assert expected in str(caught.value)


def test_overrides_change_only_what_they_name():
    base = spec_of(FULL)
    spec = spec_of(FULL, ["training.max_steps=5", "batching=padded", "data.max_rows=null"])
    assert spec.training["max_steps"] == 5 and base.training["max_steps"] == -1
    assert spec.batching == "padded" and base.batching == "packed"
    assert {k: v for k, v in spec.training.items() if k != "max_steps"} == {k: v for k, v in base.training.items() if k != "max_steps"}
    assert spec.lora == base.lora == specs.LoraSpec(r=8, lora_alpha=32, lora_dropout=0.1)
    with pytest.raises(SpecError, match="section.key=value"):
        spec_of(TINY, ["nonsense"])


def test_a_missing_or_odd_config_file_is_named(tmp_path):
    with pytest.raises(SpecError, match=r"--config .*nope\.yaml.*configs/train/.*qwen3-8b\.yaml.*tiny\.yaml"):
        spec_of(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="是文件夹"):
        spec_of(tmp_path)
    with pytest.raises(SpecError, match="YAML 映射"):
        spec_of(write_config(tmp_path, "- just\n- a list\n"))


def test_the_spec_is_frozen():
    spec = spec_of(TINY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.batching = "padded"
    with pytest.raises(TypeError):
        spec.training["learning_rate"] = 1.0


# --------------------------------------------------------------------------- paths


def test_a_relocated_workspace_moves_every_path(tmp_path):
    home = tmp_path / "data-disk"
    for source in ("env", "file"):
        if source == "env":
            full = spec_of(env={course_settings_module.PROFILE_ENV: "full", course_settings_module.WORKSPACE_ENV: str(home)})
            tiny = spec_of(TINY, env={course_settings_module.WORKSPACE_ENV: str(home)})
        else:
            settings = write_config(tmp_path, f"workspace: {home}\n", f"settings-{source}.yaml")
            full = spec_of(env={course_settings_module.PROFILE_ENV: "full"}, settings=settings)
            tiny = spec_of(TINY, settings=settings)
        for spec in (full, tiny):
            paths = dataclasses.asdict(spec.paths)
            if spec.profile.name == "tiny":
                assert paths.pop("dataset") == REPO_ROOT / "data" / "huanhuan_sample.json", "shipped, not made"
            assert paths.pop("adapter_dir") is None
            assert paths.pop("workspace") == home.resolve()
            for name, path in paths.items():
                assert path.is_relative_to(home.resolve()), f"{source}: {name} = {path} is outside the workspace"
        assert full.paths.model_dir == home.resolve() / "models" / "modelscope" / "Qwen" / "Qwen3-8B"
        assert full.paths.dataset == home.resolve() / "data" / "huanhuan.json"
        assert tiny.paths.run_dir == home.resolve() / "checkpoints" / "tiny"


def test_the_default_workspace_is_in_the_repository_and_tilde_expands(tmp_path, monkeypatch):
    spec = spec_of(TINY)
    assert spec.paths.workspace == REPO_ROOT / "workspace"
    assert display_path(spec.paths.encoded) == "workspace/data/train-tiny.jsonl"
    monkeypatch.setenv("HOME", str(tmp_path))
    spec = spec_of(TINY, env={course_settings_module.WORKSPACE_ENV: "~/autodl-tmp/ws"})
    assert spec.paths.workspace == tmp_path.resolve() / "autodl-tmp" / "ws"
    assert display_path(spec.paths.run_dir) == "~/autodl-tmp/ws/checkpoints/tiny"
    assert "工作目录: ~/autodl-tmp/ws" in spec.describe()


def test_model_dir_variable_points_the_full_profile_at_a_local_copy(tmp_path):
    local = tmp_path / "my-qwen3"
    spec = spec_of(env={course_settings_module.PROFILE_ENV: "full", course_settings_module.MODEL_DIR_ENV: str(local)})
    assert spec.paths.model_dir == local.resolve()
    assert spec.origin["model_dir"] == f"环境变量 {course_settings_module.MODEL_DIR_ENV}"
    assert spec.given == {"model_dir", "profile"}  # what the code asks; origin is the banner's text
    assert "profile" not in spec_of(env={course_settings_module.PROFILE_ENV: "auto"}).given
    # the tiny profile builds its own model: the variable is for Qwen3-8B only
    tiny = spec_of(TINY, env={course_settings_module.MODEL_DIR_ENV: str(local)})
    assert tiny.paths.model_dir.name == "tiny-qwen3" and tiny.given == frozenset()
    data = tmp_path / "mine.json"
    data.write_text("[]", encoding="utf-8")
    assert spec_of(TINY, [f"data.source={data}"]).given == {"dataset"}


@pytest.mark.parametrize("state", ["is empty", "does not exist", "holds no config.json"])
def test_a_model_dir_variable_without_a_model_names_the_variable(tmp_path, state):
    from helpers.download import prepare_model
    from helpers.models import load_tokenizer

    local = tmp_path / "my-qwen3"
    if state != "does not exist":
        local.mkdir()
    if state == "holds no config.json":
        stand_in_weights(local / "model.safetensors")
    spec = spec_of(env={course_settings_module.PROFILE_ENV: "full", course_settings_module.MODEL_DIR_ENV: str(local)})
    for step in (prepare_model, load_tokenizer):  # never a download over the user's folder
        with pytest.raises(MissingArtifactError) as caught:
            step(spec)
        message = str(caught.value)
        said = {"is empty": "是空的", "does not exist": "不存在", "holds no config.json": "没有 config.json"}[state]
        assert course_settings_module.MODEL_DIR_ENV in message and said in message and display_path(local) in message
    if state == "does not exist":
        assert not local.exists(), "nothing was created or downloaded"
    else:
        assert sorted(p.name for p in local.iterdir()) == (["model.safetensors"] if "config" in state else [])


def test_output_dir_and_run_dir_overrides(tmp_path):
    spec = spec_of(TINY, output_dir=tmp_path / "run")
    assert spec.paths.run_dir == (tmp_path / "run").resolve()
    assert spec.with_run_dir(tmp_path / "other").paths.run_dir == (tmp_path / "other").resolve()


def test_describe_says_what_was_chosen_and_why():
    text = spec_of(env={course_settings_module.PROFILE_ENV: "tiny"}).describe()
    assert text.startswith("[档位] tiny: ")
    assert f"选择依据: 由 {course_settings_module.PROFILE_ENV}=tiny 指定" in text
    assert "训练配置: configs/train/tiny.yaml" in text and "模型目录: workspace/models/tiny-qwen3" in text


def test_to_dict_holds_no_machine_path(tmp_path):
    spec = spec_of(TINY)
    assert spec.to_dict()["config_file"] == "configs/train/tiny.yaml"
    assert str(REPO_ROOT) not in repr(spec.to_dict())


# --------------------------------------------------------------------------- printed paths


def test_display_path_is_repo_relative_home_relative_or_absolute(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert display_path(REPO_ROOT / "workspace" / "models" / "x") == "workspace/models/x"
    assert display_path(REPO_ROOT) == "."
    assert display_path(tmp_path / "home" / "autodl-tmp" / "ws") == "~/autodl-tmp/ws"
    assert display_path(tmp_path / "elsewhere" / "f.txt") == (tmp_path / "elsewhere" / "f.txt").resolve().as_posix()
    assert display_path(None) == "-"
    # each form leads back to the same place when pasted at the repository root
    for path in (REPO_ROOT / "workspace" / "a", tmp_path / "home" / "b", tmp_path / "c"):
        assert (REPO_ROOT / Path(display_path(path)).expanduser()).resolve() == path.resolve()


def test_a_saved_swanlab_login_counts_as_a_key(tmp_path, monkeypatch):
    """`swanlab login` writes swanlab's .netrc; a kernel without SWANLAB_API_KEY then runs online."""
    from swanlab.sdk.internal.pkg import nrc

    from helpers.spec import build_spec

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SWANLAB_ROOT", str(tmp_path / "swanlab-home"))
    offline = build_spec(profile="tiny", env={}, settings_file=None)
    assert offline.swanlab.mode == "offline"
    (tmp_path / "swanlab-home").mkdir()
    nrc.write(tmp_path / "swanlab-home" / ".netrc", "https://api.swanlab.cn", "https://swanlab.cn", "k" * 21)
    online = build_spec(profile="tiny", env={}, settings_file=None)
    assert online.swanlab.mode == "online"
    # the key itself is never part of the spec that is printed, saved or sent to SwanLab as config
    assert "k" * 21 not in json.dumps(online.to_dict(), default=str) + online.describe()


def test_a_path_typed_in_a_shell_and_a_path_given_to_a_function(tmp_path, monkeypatch):
    import argparse

    from helpers.workspace import typed_paths

    monkeypatch.chdir(tmp_path)
    parser = argparse.ArgumentParser()
    for flag in ("--output-dir", "--checkpoint", "--target", "--out"):
        parser.add_argument(flag)
    typed = typed_paths(parser, ["--output-dir", "runs/a", "--checkpoint", "configs/train"],
                        "output_dir", "checkpoint", "target")
    # a new folder typed in a shell is made where the command runs, never inside the repository
    assert spec_of(TINY, output_dir=typed.output_dir).paths.run_dir == tmp_path / "runs" / "a"
    # an existing folder named as the course prints it (from the repository root) is found from anywhere
    assert (typed.checkpoint, typed.target) == (REPO_ROOT / "configs" / "train", None)
    # a function call (a notebook, working directory notebooks/) and a config: relative to the repository
    assert spec_of(TINY, output_dir="runs/a").paths.run_dir == REPO_ROOT / "runs" / "a"
    assert spec_of(TINY, ["output_dir=runs/b"]).paths.run_dir == REPO_ROOT / "runs" / "b"
    assert not (REPO_ROOT / "runs").exists()
    # an output file is taken from the working directory, with ~ expanded (never a folder named "~")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert typed_paths(parser, ["--out", "~/x.jsonl"], outputs=("out",)).out == str(tmp_path / "home" / "x.jsonl")
    with pytest.raises(SystemExit) as refused:   # ~nouser: argparse's one line, exit 2
        typed_paths(parser, ["--output-dir", "~no-such-user-x/run"], "output_dir")
    assert refused.value.code == 2


def test_a_config_named_without_its_folder_and_several_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError, match=r"是不是想写 --config configs/train/tiny\.yaml"):
        spec_of("tiny.yaml")
    # every override is named as it was typed: --set before each one
    with pytest.raises(SpecError, match=r"加上 --set training\.max_steps=1 --set data\.max_rows=-1："):
        spec_of(TINY, ["training.max_steps=1", "data.max_rows=-1"])


def test_a_key_without_its_section_names_the_section():
    with pytest.raises(SpecError, match=r"'max_steps'（是不是想写 training\.max_steps？）"):
        spec_of(TINY, ["max_steps=4"])
    with pytest.raises(SpecError, match=r"'eval_fraction'（是不是想写 data\.eval_fraction？）"):
        spec_of(TINY, ["eval_fraction=0.1"])


def test_the_report_names_where_a_relative_workspace_comes_from_and_what_it_is_relative_to(tmp_path):
    """QWEN3_TUTORIAL_WORKSPACE=relative/path is taken from the repository root (the same folder from any terminal or
    kernel): the report's workspace line says so, as the adapter line says where adapter_dir came from."""
    from helpers.spec import build_spec

    spec = build_spec(profile="tiny", env={"QWEN3_TUTORIAL_WORKSPACE": "relative/path"}, settings_file=None, cuda=False)
    assert spec.paths.workspace == REPO_ROOT / "relative" / "path"
    line = next(line for line in spec.describe().splitlines() if "工作目录" in line)
    assert "QWEN3_TUTORIAL_WORKSPACE" in line and "仓库根目录" in line
    plain = build_spec(profile="tiny", env={}, settings_file=None, cuda=False)
    assert "来自" not in next(line for line in plain.describe().splitlines() if "工作目录" in line)
