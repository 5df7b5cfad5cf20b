"""The pre-flight check, the settings file, the course kernel and the GPU notes between notebooks.

* ``preflight`` passes on this CPU machine in the tiny profile (with the kernel registered), and
  each faked failure fails exactly its own check, with a fix line;
* ``python -m helpers.environment check [--json]`` / ``kernel`` as ``make preflight`` and
  ``make kernel`` run them, against a temporary Jupyter data folder;
* the settings file reaches a kernel started with none of the course's variables (nbval in a
  subprocess with a clean environment); environment variables win over it;
* ``warn_if_gpu_busy`` / ``gpu_memory_report`` with ``torch.cuda`` faked.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

from helpers import download
from helpers import environment as env
from helpers.settings import SETTINGS_FILE, WORKSPACE_ENV, SpecError
from helpers.spec import build_spec
from helpers.workspace import REPO_ROOT
from tests.cli_runner import run_cli
from tests.conftest import stand_in_weights

GOOD_GPU = {"index": 0, "name": "NVIDIA GeForce RTX 4090", "memory_gb": 24.0, "free_gb": 23.5,
            "capability": "8.9", "bf16": True}


def clean_env(**extra) -> dict:
    """This process's environment without any course or SwanLab setting; helpers from this checkout."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith(("QWEN3_TUTORIAL_", "SWANLAB"))}
    return {**kept, "PYTHONPATH": str(REPO_ROOT), **extra}


def by_name(checks) -> dict:
    return {check.name: check for check in checks}


# --------------------------------------------------------------------------- preflight, in process


def test_preflight_passes_in_the_tiny_profile_on_this_machine(tiny_spec):
    checks = env.preflight(tiny_spec, kernel=True)  # real versions, pins, memory, disk, dataset
    assert [c.name for c in checks] == ["python", "packages", "gpu", "memory", "disk", "model", "dataset",
                                        "swanlab", "kernel"]
    failed = [c for c in checks if not c.ok]
    assert not failed, env.format_checks(checks)
    assert all(c.fix == "" for c in checks)
    assert env.format_checks(checks).splitlines()[-1] == "全部通过 (all checks passed)"
    assert "tiny 档位不需要 GPU" in by_name(checks)["gpu"].detail


@pytest.fixture
def full_spec(tmp_path):
    """A full-profile spec in a temporary workspace that holds a (stand-in) model and the dataset."""
    workspace = tmp_path / "workspace"
    spec = build_spec(profile="full", env={WORKSPACE_ENV: str(workspace)}, settings_file=None, cuda=False)
    spec.paths.model_dir.mkdir(parents=True)
    (spec.paths.model_dir / "config.json").write_text("{}", encoding="utf-8")
    stand_in_weights(spec.paths.model_dir / "model.safetensors")
    spec.paths.dataset.parent.mkdir(parents=True)
    spec.paths.dataset.write_text("[]", encoding="utf-8")
    return spec


def full_fakes(**changes) -> dict:
    """Everything a full-profile machine ready for class reports; ``changes`` breaks one thing."""
    fakes = {"gpu_list": [GOOD_GPU], "free_gb": 200.0, "memory": (64.0, 60.0), "kernel": True,
             "dataset_reachable": lambda: True}
    fakes.update(changes)
    return fakes


def test_a_full_machine_ready_for_class_passes(full_spec):
    checks = env.preflight(full_spec, **full_fakes())
    assert all(c.ok for c in checks), env.format_checks(checks)
    assert "RTX 4090" in by_name(checks)["gpu"].detail and "bf16 支持" in by_name(checks)["gpu"].detail


def _wrong_version():
    versions = env.package_versions()
    versions["transformers"] = "4.0.0"
    return versions


def _remove_model(spec):
    (spec.paths.model_dir / "config.json").unlink()


def _remove_dataset(spec):
    spec.paths.dataset.unlink()


FAILURES = {
    # name: (fakes, change to the workspace, the failing check, words in its fix)
    "no GPU": ({"gpu_list": []}, None, "gpu", "--profile tiny"),
    "GPU held by a previous kernel": (
        {"gpu_list": [{**GOOD_GPU, "free_gb": 6.0}]}, None, "gpu", "nvidia-smi"),
    "card too small": ({"gpu_list": [{**GOOD_GPU, "memory_gb": 8.0, "free_gb": 8.0}]}, None, "gpu",
                       "显存更大"),
    "low disk": ({"free_gb": 3.0}, None, "disk", "setup --workspace"),
    "low memory": ({"memory": (16.0, 1.5)}, None, "memory", "内存更大"),
    "model missing": ({}, _remove_model, "model", "python -m helpers.download --profile full"),
    "dataset unreachable": ({"dataset_reachable": lambda: False}, _remove_dataset, "dataset",
                            "setup --dataset"),
    "wrong package version": ({"versions": _wrong_version()}, None, "packages", "make venv"),
    "kernel missing": ({"kernel": False}, None, "kernel", "make kernel"),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_each_faked_failure_fails_its_own_check_with_a_fix(full_spec, case):
    fakes, change, name, fix = FAILURES[case]
    if change is not None:
        change(full_spec)
    checks = env.preflight(full_spec, **full_fakes(**fakes))
    failed = [c.name for c in checks if not c.ok]
    assert failed == [name], env.format_checks(checks)
    assert fix in by_name(checks)[name].fix
    text = env.format_checks(checks)
    assert f"失败 FAIL] {name}" in text and f"fix: {by_name(checks)[name].fix}" in text
    assert text.splitlines()[-1] == "1 项未通过 (1 check(s) failed)"


def test_wrong_version_names_the_package_and_its_pin(full_spec):
    checks = env.preflight(full_spec, **full_fakes(versions=_wrong_version()))
    pin = env.pinned_versions()["transformers"]
    assert f"transformers 4.0.0（固定为 {pin}）" in by_name(checks)["packages"].detail


def test_online_swanlab_without_a_key_fails_its_check(full_spec):
    """``train`` refuses online mode without a key before any work: the check before class says so first."""
    online = full_spec.replace(swanlab=dataclasses.replace(full_spec.swanlab, mode="online"))
    checks = env.preflight(online, **full_fakes(swanlab_key=False))
    assert [c.name for c in checks if not c.ok] == ["swanlab"], env.format_checks(checks)
    assert "swanlab login" in by_name(checks)["swanlab"].fix and "QWEN3_TUTORIAL_SWANLAB_MODE" in by_name(checks)["swanlab"].fix
    assert all(c.ok for c in env.preflight(online, **full_fakes(swanlab_key=True)))
    offline = full_spec.replace(swanlab=dataclasses.replace(full_spec.swanlab, mode="offline"))
    assert all(c.ok for c in env.preflight(offline, **full_fakes(swanlab_key=False)))


def test_a_wrong_swanlab_mode_names_where_it_was_set(tmp_path):
    settings = tmp_path / "course-settings.yaml"
    settings.write_text("swanlab_mode: cloud\n", encoding="utf-8")
    with pytest.raises(SpecError, match="设置文件") as error:
        build_spec(profile="tiny", settings_file=settings, env={}, cuda=False)
    assert "QWEN3_TUTORIAL_SWANLAB_MODE" not in str(error.value)
    with pytest.raises(SpecError, match="环境变量 QWEN3_TUTORIAL_SWANLAB_MODE"):
        build_spec(profile="tiny", settings_file=settings, env={"QWEN3_TUTORIAL_SWANLAB_MODE": "nope"}, cuda=False)


def test_a_model_folder_of_another_qwen3_size_or_architecture_fails_the_check_and_the_loading(tmp_path):
    """One model_dir setting serves full and small: a folder of the wrong model is named before anything loads."""
    from helpers import download, models
    from helpers.workspace import MissingArtifactError

    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 4096,
                                                   "num_hidden_layers": 32}), encoding="utf-8")
    given = build_spec(profile="small", env={WORKSPACE_ENV: str(tmp_path / "ws"), "QWEN3_TUTORIAL_MODEL_DIR": str(llama)},
                       settings_file=None, cuda=False)
    model = by_name(env.preflight(given, **full_fakes()))["model"]
    assert not model.ok and "model_type='llama'" in model.detail and "setup --model-dir" in model.fix
    with pytest.raises(MissingArtifactError, match="hidden_size=4096"):
        models.require_model_dir(given)
    stand_in_weights(llama / "model.safetensors")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (llama / name).write_text("{}", encoding="utf-8")
    with pytest.raises(MissingArtifactError, match="Qwen3-0.6B"):
        download.prepare_model(given)          # complete files of another model are not "ready"

    own = build_spec(profile="small", env={WORKSPACE_ENV: str(tmp_path / "ws2")}, settings_file=None, cuda=False)
    own.paths.model_dir.mkdir(parents=True)
    (own.paths.model_dir / "config.json").write_text(json.dumps(models.qwen3_config("Qwen3-8B")), encoding="utf-8")
    model = by_name(env.preflight(own, **full_fakes()))["model"]
    assert not model.ok and "hidden_size=4096" in model.detail and "download --profile small" in model.fix
    (own.paths.model_dir / "config.json").write_text(json.dumps(models.qwen3_config("Qwen3-0.6B")), encoding="utf-8")
    stand_in_weights(own.paths.model_dir / "model.safetensors")
    assert by_name(env.preflight(own, **full_fakes()))["model"].ok
    assert models.require_model_dir(own) == own.paths.model_dir


def test_an_interrupted_download_fails_the_model_check_and_counts_its_weights_in_the_disk_budget(full_spec):
    """A config and some of the shards its index names is a download cut short, not a model: the check says so
    and the disk it asks for still holds the 16.4 GB of weights (what the download's own disk check wants)."""
    folder = full_spec.paths.model_dir
    (folder / "model.safetensors").unlink()
    shards = [f"model-0000{i}-of-00005.safetensors" for i in range(1, 6)]
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": dict(zip("abcde", shards, strict=True))}),
                                                         encoding="utf-8")
    (folder / shards[0]).write_bytes(b"x")
    full = download.disk_budget_gb(False)[download.BUDGET_TOTAL]
    checks = by_name(env.preflight(full_spec, **full_fakes(free_gb=full - 1)))
    assert not checks["model"].ok and "下载没有完成" in checks["model"].detail
    assert "python -m helpers.download --profile full" in checks["model"].fix
    assert not checks["disk"].ok and f"需要 {full:.1f} GB" in checks["disk"].detail
    for shard in shards[1:]:
        (folder / shard).write_bytes(b"x")
    assert not by_name(env.preflight(full_spec, **full_fakes(free_gb=full - 1)))["model"].ok   # all there, none whole
    for shard in shards:
        stand_in_weights(folder / shard)
    checks = by_name(env.preflight(full_spec, **full_fakes(free_gb=full - 1)))
    assert checks["model"].ok and checks["disk"].ok


def test_the_dataset_is_downloadable_when_reachable(full_spec):
    _remove_dataset(full_spec)
    checks = env.preflight(full_spec, **full_fakes())
    assert by_name(checks)["dataset"].ok and "可以下载" in by_name(checks)["dataset"].detail


def test_a_dataset_path_the_user_named_must_exist(tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN3_TUTORIAL_DATASET", str(tmp_path / "nowhere.json"))   # the variable of this process
    spec = build_spec(profile="tiny", env={"QWEN3_TUTORIAL_DATASET": str(tmp_path / "nowhere.json")},
                      settings_file=None, cuda=False)
    checks = env.preflight(spec, kernel=True, dataset_reachable=lambda: True)
    assert [c.name for c in checks if not c.ok] == ["dataset"]
    assert "QWEN3_TUTORIAL_DATASET" in by_name(checks)["dataset"].detail and "不存在" in by_name(checks)["dataset"].detail
    assert "unset QWEN3_TUTORIAL_DATASET" in by_name(checks)["dataset"].fix   # setup alone would not win over it
    spec = build_spec(profile="tiny", env={"QWEN3_TUTORIAL_DATASET": str(tmp_path)}, settings_file=None, cuda=False)
    checks = env.preflight(spec, kernel=True, dataset_reachable=lambda: True)   # a folder exists, but is no data file
    assert [c.name for c in checks if not c.ok] == ["dataset"] and "是文件夹" in by_name(checks)["dataset"].detail


def test_setup_writes_a_path_that_is_not_there_yet_and_says_so(tmp_path, monkeypatch):
    settings = tmp_path / "course-settings.yaml"
    write = env.write_settings
    monkeypatch.setattr(env, "write_settings", lambda values: write(values, settings))
    (tmp_path / "adapter").mkdir()
    done = run_cli("environment", ["setup", "--dataset", str(tmp_path), "--model-dir", str(tmp_path / "nowhere"),
                                   "--adapter-dir", str(tmp_path / "adapter")], env=clean_env(), cwd=REPO_ROOT)
    assert done.code == 0, done.stderr
    notes = [line for line in done.stdout.splitlines() if line.startswith("注意：")]
    assert [line.split()[0] for line in notes] == ["注意：model_dir", "注意：dataset"]
    assert "还不存在" in notes[0] and "是文件夹" in notes[1]
    assert str(tmp_path / "nowhere") in settings.read_text(encoding="utf-8")     # written all the same
    # a variable that beats the file is named, with how to let the file's value count
    done = run_cli("environment", ["setup", "--adapter-dir", str(tmp_path / "adapter")], cwd=REPO_ROOT,
                   env=clean_env(QWEN3_TUTORIAL_ADAPTER_DIR=str(tmp_path)))
    assert done.code == 0 and "unset QWEN3_TUTORIAL_ADAPTER_DIR" in done.stdout


def test_the_preflight_checks_an_adapter_dir_setting(tmp_path, tiny_checkpoint):
    """The teacher's fallback for a failed training (docs/teaching.md): a typo in it fails here, not in lesson 05."""
    checks = {}
    for name, adapter in (("nowhere", tmp_path / "nowhere"), ("given", tiny_checkpoint)):
        spec = build_spec(profile="tiny", env={"QWEN3_TUTORIAL_ADAPTER_DIR": str(adapter)}, settings_file=None,
                          cuda=False)
        checks[name] = by_name(env.preflight(spec, kernel=True, dataset_reachable=lambda: True))["adapter"]
    assert not checks["nowhere"].ok and "nowhere" in checks["nowhere"].detail
    assert "QWEN3_TUTORIAL_ADAPTER_DIR" in checks["nowhere"].fix
    assert checks["given"].ok
    assert "adapter" not in by_name(env.preflight(build_spec(profile="tiny", env={}, settings_file=None, cuda=False),
                                                  kernel=True, dataset_reachable=lambda: True))


def test_setup_takes_a_profile_and_mode_as_every_reader_does(tmp_path):
    """--profile TINY works for download, check and the variable: setup refused it (and suggested 'tiny' for ' tiny ')."""
    from helpers.settings import read_settings_file

    settings = tmp_path / "course-settings.yaml"
    env.write_settings({"profile": " TINY ", "swanlab_mode": "OFFLINE"}, settings)
    assert read_settings_file(settings) == {"profile": "tiny", "swanlab_mode": "offline"}
    with pytest.raises(env.SpecError, match="'tinny'"):
        env.write_settings({"profile": "tinny"}, settings)


def test_setup_refuses_a_path_that_is_not_utf8_in_one_line(tmp_path, monkeypatch):
    """A terminal in another encoding (GBK) hands undecodable bytes over: one line, and no settings file written."""
    settings = tmp_path / "course-settings.yaml"
    write = env.write_settings
    monkeypatch.setattr(env, "write_settings", lambda values: write(values, settings))
    gbk = os.fsdecode(str(tmp_path).encode() + "/工作区".encode("gbk"))
    done = run_cli("environment", ["setup", "--workspace", gbk], env=clean_env(), cwd=REPO_ROOT)
    assert done.code == 2 and "Traceback" not in done.stderr and "UTF-8" in done.stderr, done.stderr
    assert not settings.exists()


def test_a_workspace_that_is_a_file_is_refused_by_setup_and_fails_the_check(tmp_path, monkeypatch):
    settings = tmp_path / "course-settings.yaml"
    write = env.write_settings
    monkeypatch.setattr(env, "write_settings", lambda values: write(values, settings))
    (tmp_path / "f.json").write_text("x", encoding="utf-8")
    done = run_cli("environment", ["setup", "--workspace", str(tmp_path / "f.json")], env=clean_env(), cwd=REPO_ROOT)
    assert done.code == 2 and "f.json" in done.stderr and not settings.exists()
    done = run_cli("environment", ["setup", "--workspace", str(tmp_path / "f.json" / "sub")], env=clean_env(),
                   cwd=REPO_ROOT)                                                   # a folder below a file: neither
    assert done.code == 2 and "f.json" in done.stderr and not settings.exists()
    spec = build_spec(profile="tiny", env={"QWEN3_TUTORIAL_WORKSPACE": str(tmp_path / "f.json")},
                      settings_file=None, cuda=False)
    checks = env.preflight(spec, kernel=True, dataset_reachable=lambda: True)
    assert not by_name(checks)["disk"].ok and "setup --workspace" in by_name(checks)["disk"].fix
    spec = build_spec(profile="tiny", env={"QWEN3_TUTORIAL_WORKSPACE": str(tmp_path / "f.json" / "sub")},
                      settings_file=None, cuda=False)
    assert not by_name(env.preflight(spec, kernel=True, dataset_reachable=lambda: True))["disk"].ok


def test_a_read_only_workspace_fails_the_disk_check(tmp_path, monkeypatch):
    """A read-only mount passed the check (it only looked at free space); training then failed at its first write.
    Root ignores folder modes, so the read-only answer is the system's, stood in for."""
    import os

    workspace = tmp_path / "ws"
    workspace.mkdir()
    spec = build_spec(profile="tiny", env={"QWEN3_TUTORIAL_WORKSPACE": str(workspace / "new")}, settings_file=None,
                      cuda=False)
    assert by_name(env.preflight(spec, kernel=True, dataset_reachable=lambda: True))["disk"].ok
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == workspace else access(path, mode))
    disk = by_name(env.preflight(spec, kernel=True, dataset_reachable=lambda: True))["disk"]
    assert not disk.ok and "setup --workspace" in disk.fix



def test_a_setup_fix_also_unsets_the_variable_that_would_beat_it(full_spec, tmp_path, monkeypatch):
    """`setup --profile tiny` / `setup --workspace ...` change the settings file; a variable set in the shell beats
    that file, so the fix names the `unset` too (only then)."""
    for variable in ("QWEN3_TUTORIAL_PROFILE", WORKSPACE_ENV):
        monkeypatch.delenv(variable, raising=False)
    plain = by_name(env.preflight(full_spec, **full_fakes(gpu_list=[], free_gb=1.0)))
    assert "unset" not in plain["gpu"].fix and "unset" not in plain["disk"].fix
    monkeypatch.setenv("QWEN3_TUTORIAL_PROFILE", "full")
    monkeypatch.setenv(WORKSPACE_ENV, str(full_spec.paths.workspace))
    checks = by_name(env.preflight(full_spec, **full_fakes(gpu_list=[], free_gb=1.0)))
    assert "setup --profile tiny" in checks["gpu"].fix and "unset QWEN3_TUTORIAL_PROFILE" in checks["gpu"].fix
    assert "setup --workspace" in checks["disk"].fix and f"unset {WORKSPACE_ENV}" in checks["disk"].fix
# --------------------------------------------------------------------------- the CLI: make preflight / make kernel


def run_module(*args, jupyter_data: Path, **extra):
    """``python -m helpers.environment *args`` (in this process) from the repository root."""
    return run_cli("environment", args, env=clean_env(JUPYTER_DATA_DIR=str(jupyter_data), **extra), cwd=REPO_ROOT)


def test_make_preflight_fails_without_the_kernel_then_make_kernel_registers_it(tmp_path):
    jupyter_data = tmp_path / "jupyter"
    before = subprocess.run(["make", "--no-print-directory", "preflight", "PROFILE=tiny", f"PY={sys.executable}"],
                            cwd=REPO_ROOT, env=clean_env(JUPYTER_DATA_DIR=str(jupyter_data)), capture_output=True,
                            text=True, timeout=300)
    assert before.returncode != 0 and "Error 1" in before.stderr, before.stdout + before.stderr
    assert "失败 FAIL] kernel" in before.stdout and "fix: make kernel" in before.stdout
    assert before.stdout.strip().splitlines()[-1] == "1 项未通过 (1 check(s) failed)"

    made = subprocess.run(["make", "kernel", f"PY={sys.executable}"], cwd=REPO_ROOT,
                          env=clean_env(JUPYTER_DATA_DIR=str(jupyter_data)), capture_output=True, text=True,
                          timeout=300)
    assert made.returncode == 0, made.stdout + made.stderr
    spec_file = jupyter_data / "kernels" / env.KERNEL_NAME / "kernel.json"
    kernel = json.loads(spec_file.read_text(encoding="utf-8"))
    assert kernel["display_name"] == env.KERNEL_DISPLAY
    assert Path(kernel["argv"][0]).resolve() == Path(sys.executable).resolve()

    after = run_module("check", "--json", "--profile", "tiny", jupyter_data=jupyter_data)
    assert after.code == 0, after.output
    report = json.loads(after.stdout)
    assert report["ok"] is True and report["profile"] == "tiny" and report["host"]
    assert {c["name"]: c["ok"] for c in report["checks"]}["kernel"] is True
    assert all(set(c) == {"name", "ok", "detail", "fix"} for c in report["checks"])


def test_check_json_reports_failures_with_their_fix(tmp_path):
    result = run_module("check", "--json", "--profile", "full", jupyter_data=tmp_path / "jupyter",
                        **{WORKSPACE_ENV: str(tmp_path / "workspace")})
    assert result.code == 1, result.output
    report = json.loads(result.stdout)
    failed = {c["name"]: c["fix"] for c in report["checks"] if not c["ok"]}
    assert report["ok"] is False
    assert "python -m helpers.download" in failed["model"]    # a fresh workspace has no model
    assert "make kernel" in failed["kernel"]                   # an empty Jupyter folder has no kernel
    if not torch.cuda.is_available():
        assert "--profile tiny" in failed["gpu"]


# --------------------------------------------------------------------------- the settings file


def test_settings_file_is_read_and_the_environment_wins(tmp_path):
    settings = tmp_path / "course-settings.yaml"
    workspace, other = tmp_path / "data-disk" / "ws", tmp_path / "elsewhere"
    env.write_settings({"profile": "tiny", "workspace": str(workspace), "swanlab_mode": "disabled"}, path=settings)
    spec = build_spec(settings_file=settings, env={}, cuda=False)
    assert spec.profile.name == "tiny"
    assert spec.paths.workspace == workspace
    assert spec.swanlab.mode == "disabled"
    assert spec.origin["workspace"].startswith("设置文件")

    spec = build_spec(settings_file=settings, env={WORKSPACE_ENV: str(other)}, cuda=False)
    assert spec.paths.workspace == other and spec.origin["workspace"] == f"环境变量 {WORKSPACE_ENV}"

    env.write_settings({"workspace": None}, path=settings)        # None removes a key, the rest stays
    spec = build_spec(settings_file=settings, env={}, cuda=False)
    assert spec.paths.workspace == REPO_ROOT / "workspace" and spec.swanlab.mode == "disabled"


def test_settings_file_never_takes_an_api_key(tmp_path):
    settings = tmp_path / "course-settings.yaml"
    with pytest.raises(SpecError, match="'swanlab_api_key'"):
        env.write_settings({"swanlab_api_key": "secret-key-123"}, path=settings)
    assert not settings.exists()


@pytest.fixture
def course_copy(tmp_path) -> Path:
    """The course's code, configs and sample data copied into a repository folder of its own, so that the
    settings file written there is not the one that this session's notebooks and commands read."""
    repo = tmp_path / "course"
    for name in ("helpers", "configs", "data"):
        shutil.copytree(REPO_ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    return repo


def test_the_settings_file_reaches_a_kernel_started_without_the_variables(tmp_path, course_copy):
    workspace = tmp_path / "data-disk" / "qwen3-workspace"
    copy_env = clean_env(PYTHONPATH=str(course_copy))   # `helpers` (and so the repository root) is the copy's
    setup = subprocess.run([sys.executable, "-m", "helpers.environment", "setup", "--profile", "tiny", "--workspace",
                            str(workspace), "--swanlab-mode", "disabled"], cwd=tmp_path, env=copy_env,
                           capture_output=True, text=True, timeout=300)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert (course_copy / SETTINGS_FILE.name).is_file()

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import os\n"
        "from pathlib import Path\n"
        "from helpers.settings import SETTINGS_FILE\n"
        "from helpers.spec import build_spec\n"
        "assert not [k for k in os.environ if k.startswith('QWEN3_TUTORIAL_')]\n"
        f"assert SETTINGS_FILE == Path({str((course_copy / SETTINGS_FILE.name).resolve())!r}), SETTINGS_FILE\n"
        "spec = build_spec()\n"
        f"assert spec.paths.workspace == Path({str(workspace)!r}), spec.paths.workspace\n"
        "assert spec.profile.name == 'tiny' and spec.swanlab.mode == 'disabled'\n"
        "print(spec.origin['workspace'].split()[0])")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "settings-check.ipynb"
    nbformat.write(nb, path)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                             str(path)], cwd=tmp_path, env=copy_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "1 passed" in result.stdout


# --------------------------------------------------------------------------- between notebooks (torch.cuda faked)


@pytest.fixture
def fake_gpu(monkeypatch):
    """One 24 GB GPU; set ``state['free']`` / ``state['reserved']`` (bytes) to shape what it reports."""
    state = {"total": 24e9, "free": 23e9, "reserved": 0, "allocated": 0}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=0: (state["free"], state["total"]))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=0: state["reserved"])
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=0: state["allocated"])
    return state


def test_warns_when_another_process_holds_gpu_memory(fake_gpu, capsys):
    fake_gpu["free"] = 24e9 - 17.5e9            # a previous notebook's kernel still holds Qwen3-8B
    assert env.gpu_memory_held_by_others() == pytest.approx(17.5)
    env.warn_if_gpu_busy()
    out = capsys.readouterr().out
    assert "警告" in out and "17.5 GB" in out and "Shut Down" in out and "nvidia-smi" in out


def test_no_warning_when_only_this_kernel_holds_memory(fake_gpu, capsys):
    fake_gpu["free"], fake_gpu["reserved"] = 24e9 - 16.8e9, 16.5e9   # ours, plus 0.3 GB of CUDA context
    env.warn_if_gpu_busy()
    out = capsys.readouterr().out
    assert "警告" not in out and "空闲" in out and "0.3 GB" in out


def test_a_machine_with_two_gpus_is_told_to_show_the_notebook_one(fake_gpu, monkeypatch, capsys):
    env.warn_if_gpu_busy()
    assert "CUDA_VISIBLE_DEVICES" not in capsys.readouterr().out
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    env.warn_if_gpu_busy()
    assert "CUDA_VISIBLE_DEVICES=0" in capsys.readouterr().out


def test_without_a_gpu_the_first_cell_says_so(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    env.warn_if_gpu_busy()
    assert "没有 CUDA GPU" in capsys.readouterr().out
    assert "不占显存" in env.gpu_memory_report()


def test_last_cell_reports_what_this_kernel_holds(fake_gpu):
    fake_gpu["reserved"], fake_gpu["allocated"] = 18.24e9, 16.41e9
    line = env.gpu_memory_report()
    assert "18.2 GB" in line and "16.4 GB" in line
    assert "关闭本内核" in line and "Shut Down Kernel" in line


def test_helpers_silences_bitsandbytes_missing_kernel_warning():
    """On a CPU with AVX512-BF16, importing bitsandbytes (peft, trl and the Trainer do) logs a warning about an
    optional hub kernel; importing helpers first keeps every CLI and notebook free of it."""
    pytest.importorskip("bitsandbytes")
    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16, so bitsandbytes does not look for the kernel")
    imports = {"bare": "import peft", "helpers first": "import helpers; import peft"}
    stderr = {case: subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=clean_env(), capture_output=True,
                                   text=True, timeout=300).stderr for case, code in imports.items()}
    assert "gemm_4bit_forward" in stderr["bare"], "bitsandbytes no longer warns: drop the filter in helpers/__init__"
    assert "gemm_4bit_forward" not in stderr["helpers first"], stderr["helpers first"]


def test_the_kernel_check_fails_for_a_kernel_that_cannot_start_or_runs_another_python(tmp_path, monkeypatch):
    """A kernel registered from a moved, deleted or other clone passes no more: it would not start, or would
    import that clone's helpers."""
    kernels = tmp_path / "jupyter" / "kernels" / env.KERNEL_NAME
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter"))
    assert env.kernel_problem() == "没有注册"
    kernels.mkdir(parents=True)
    same_folder = os.path.join(os.path.dirname(sys.executable), "python3")   # the same venv under another name
    (tmp_path / "linked-venv-bin").symlink_to(os.path.dirname(sys.executable), target_is_directory=True)
    linked = str(tmp_path / "linked-venv-bin" / os.path.basename(sys.executable))   # the same venv through a link
    for python, problem in ((str(tmp_path / "old-clone" / ".venv" / "bin" / "python"), "不存在"),
                            (shutil.which("true"), "不是这里的"), (sys.executable, None), (same_folder, None),
                            (linked, None)):
        (kernels / "kernel.json").write_text(json.dumps({"argv": [python, "-m", "ipykernel_launcher", "-f",
                                                                  "{connection_file}"], "display_name": "x",
                                                         "language": "python"}), encoding="utf-8")
        found = env.kernel_problem()
        assert found is None if problem is None else problem in found


def test_commands_of_other_tools_printed_outside_the_repository_work_when_pasted(tmp_path, monkeypatch):
    """swanlab and make take paths from where they run: printed from a terminal elsewhere, `swanlab sync
    workspace/swanlog/...` and `make kernel` failed when pasted; they now start with the cd that makes them work."""
    import shlex
    import subprocess

    from helpers import tracking

    inside = REPO_ROOT / "configs" / "accelerate"      # any folder of the repository stands in for a run folder
    monkeypatch.chdir(tmp_path)
    pasted = tracking.sync_command(inside).replace("swanlab sync", "test -d")
    assert subprocess.run(["bash", "-c", pasted], cwd=tmp_path).returncode == 0
    assert tracking.sync_command(tmp_path) == f"swanlab sync {tmp_path}"    # a path of its own needs no cd
    spec = build_spec(profile="tiny", env={"QWEN3_TUTORIAL_WORKSPACE": str(tmp_path / "ws")}, settings_file=None,
                      cuda=False)
    kernel = by_name(env.preflight(spec, kernel=False, dataset_reachable=lambda: True))["kernel"]
    assert kernel.fix.startswith(f"cd {shlex.quote(str(REPO_ROOT))} && make kernel")
    monkeypatch.chdir(REPO_ROOT)
    assert tracking.sync_command(inside) == "swanlab sync configs/accelerate"
