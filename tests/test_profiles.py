import pytest

from helpers import profiles
from helpers.workspace import MissingArtifactError, display_path, require_artifact, workspace_dir


def test_auto_picks_tiny_without_cuda(monkeypatch):
    monkeypatch.setenv(profiles.PROFILE_ENV, "auto")
    monkeypatch.setattr(profiles, "cuda_available", lambda: False)
    assert profiles.resolve_profile().name == "tiny"
    assert "no CUDA GPU found" in profiles.explain_profile()


def test_auto_picks_full_with_cuda(monkeypatch):
    monkeypatch.delenv(profiles.PROFILE_ENV, raising=False)
    monkeypatch.setattr(profiles, "cuda_available", lambda: True)
    assert profiles.resolve_profile().name == "full"


def test_explicit_profiles_and_unknown_name(monkeypatch):
    for name in ("full", "tiny", "random8b"):
        monkeypatch.setenv(profiles.PROFILE_ENV, name)
        assert profiles.resolve_profile().name == name
    monkeypatch.setenv(profiles.PROFILE_ENV, "huge")
    with pytest.raises(ValueError, match="full, tiny, random8b, auto"):
        profiles.resolve_profile()


def test_random8b_is_the_real_architecture_in_bf16():
    p = profiles.PROFILES["random8b"]
    assert (p.weights, p.dtype, p.source) == ("random", "bfloat16", "config-only")


def test_missing_artifact_names_the_notebook(tmp_path):
    with pytest.raises(MissingArtifactError, match=r"notebooks/03-data.ipynb"):
        require_artifact(tmp_path / "nothing.jsonl", made_by="03-data.ipynb")


def test_display_path_hides_machine_prefix(tmp_path):
    inside = workspace_dir() / "models" / "x"
    assert display_path(inside) == "workspace/models/x"
    assert display_path(tmp_path / "file.txt") == ".../file.txt"
