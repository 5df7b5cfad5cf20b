"""The exact pins agree across requirements files, environment.yml and the Makefile."""

import re

from helpers.workspace import REPO_ROOT

PIN = re.compile(r"^\s*-?\s*([A-Za-z0-9_.\-\[\]]+)==([^\s#]+)")


def pins(path):
    out = {}
    for line in (REPO_ROOT / path).read_text(encoding="utf-8").splitlines():
        match = PIN.match(line)
        if match:
            out[match.group(1).lower()] = match.group(2)
    return out


def test_every_requirement_is_pinned_exactly():
    for path in ("requirements.txt", "requirements-cpu.txt"):
        for line in (REPO_ROOT / path).read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith(("#", "-r")):
                assert PIN.match(line), f"{path}: {line!r} is not pinned with =="


def test_environment_yml_matches_requirements():
    expected = {**pins("requirements.txt"), **pins("requirements-cpu.txt")}
    assert pins("environment.yml") == expected


def test_course_versions_are_the_required_series():
    got = pins("requirements.txt")
    assert got["transformers"].startswith("5.")
    assert got["peft"].startswith("0.21.")
    assert got["accelerate"].startswith("1.15.")
    assert got["datasets"].startswith("5.")
    assert got["modelscope"].startswith("1.40.")
    assert got["swanlab"].startswith("0.10.")
    assert got["jupyterlab"].startswith("4.")
    assert got["ipywidgets"].startswith("8.")
    assert got["nbval"].startswith("0.11.")
    assert pins("requirements-cpu.txt")["torch"] == "2.13.0"
    assert "torch" not in got, "torch stays out of requirements.txt so GPU users keep their CUDA build"


def test_installed_versions_match_pins():
    import importlib.metadata

    for name, version in pins("requirements.txt").items():
        installed = importlib.metadata.version(name)
        assert installed == version, f"{name}: installed {installed}, pinned {version}"
