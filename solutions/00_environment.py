"""Solutions to notebook 00's exercises: the precedence rule of the run spec.

Every spec here is built from an explicit environment and settings file, so nothing on your
machine (your shell's variables, your course-settings.yaml) is read or changed.

Run from the repository root:  python solutions/00_environment.py [exercise number]
"""

import tempfile
from pathlib import Path

from _common import exercise, run

from helpers.settings import PROFILE_ENV, WORKSPACE_ENV, SpecError
from helpers.spec import build_spec


@exercise(1, "环境变量和训练配置互相矛盾")
def contradicting_profile():
    # The variable says full, the config file says `profile: tiny`: the spec refuses, naming both and the fix.
    try:
        build_spec("configs/train/tiny.yaml", env={PROFILE_ENV: "full"}, settings_file=None, cuda=False)
    except SpecError as err:
        message = str(err)
    else:
        raise AssertionError("a contradicting profile was accepted")
    print("报错信息:", message)
    assert f"{PROFILE_ENV}=full" in message and "profile: tiny" in message
    assert "configs/train/qwen3-8b.yaml" in message, "the error names the config made for full"

    # random8b may run the full recipe (same numbers, random weights): no contradiction.
    spec = build_spec("configs/train/qwen3-8b.yaml", env={PROFILE_ENV: "random8b"}, settings_file=None, cuda=True)
    print(f"{PROFILE_ENV}=random8b + qwen3-8b.yaml → profile {spec.profile.name}（{spec.origin['profile']}）")
    assert spec.profile.name == "random8b"

    # Without the variable, the file's `profile:` decides.
    spec = build_spec("configs/train/tiny.yaml", env={}, settings_file=None, cuda=True)
    print(f"不设变量 + tiny.yaml（即使有 GPU）→ profile {spec.profile.name}")
    assert spec.profile.name == "tiny"


@exercise(2, "环境变量和设置文件，谁说了算")
def environment_beats_settings_file():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        settings = tmp / "course-settings.yaml"
        settings.write_text(f"profile: tiny\nworkspace: {tmp / 'from-file'}\n", encoding="utf-8")

        both = build_spec(env={WORKSPACE_ENV: str(tmp / "from-env")}, settings_file=settings, cuda=False)
        only_file = build_spec(env={}, settings_file=settings, cuda=False)
        print(f"文件和变量都设置了 workspace → {both.paths.workspace.name}（来源: {both.origin['workspace']}）")
        print(f"只有设置文件            → {only_file.paths.workspace.name}（来源: {only_file.origin['workspace']}）")
        assert both.paths.workspace == (tmp / "from-env").resolve()
        assert both.origin["workspace"].startswith("环境变量")
        assert only_file.paths.workspace == (tmp / "from-file").resolve()
        assert only_file.origin["workspace"].startswith("设置文件")
        # Everything below the workspace moves with it: models, data, checkpoints.
        assert both.paths.model_dir.is_relative_to(both.paths.workspace)
        assert both.paths.run_dir.is_relative_to(both.paths.workspace)


@exercise(3, "auto：有没有 GPU 决定 profile")
def auto_profile():
    without = build_spec(env={PROFILE_ENV: "auto"}, settings_file=None, cuda=False)
    with_gpu = build_spec(env={PROFILE_ENV: "auto"}, settings_file=None, cuda=True)
    print(f"auto，没有 CUDA → {without.profile.name}，训练配置 {without.config_file.name}（{without.origin['profile']}）")
    print(f"auto，有 CUDA   → {with_gpu.profile.name}，训练配置 {with_gpu.config_file.name}（{with_gpu.origin['profile']}）")
    assert (without.profile.name, without.config_file.name) == ("tiny", "tiny.yaml")
    assert (with_gpu.profile.name, with_gpu.config_file.name) == ("full", "qwen3-8b.yaml")
    try:
        build_spec(env={PROFILE_ENV: "huge"}, settings_file=None, cuda=False)
    except SpecError as err:
        print("拼错的 profile:", err)
        assert "huge" in str(err) and "tiny" in str(err)
    else:
        raise AssertionError("an unknown profile was accepted")


if __name__ == "__main__":
    run()
