"""The model check runs once per checkpoint file and code, not on every run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import am.model_source
from am.errors import CheckpointError
from am.model.checkpoint import default_model_path
from am.model_source import DEFAULT_MODEL, resolve_model
from am.settings import Settings


def test_the_default_model_is_named_without_importing_the_model_package():
    assert default_model_path() == DEFAULT_MODEL


def test_a_checkpoint_is_checked_once_and_again_when_its_bytes_change(tmp_path, tiny_model, monkeypatch):
    checked: list[Path] = []
    real_check = am.model_source.check_checkpoint
    monkeypatch.setattr(am.model_source, "check_checkpoint", lambda path: (checked.append(path), real_check(path)))
    model = tmp_path / "model.pt"
    shutil.copyfile(tiny_model, model)
    settings = Settings(model=str(model))

    first = resolve_model(settings, cache_dir=tmp_path / "cache")
    assert resolve_model(settings, cache_dir=tmp_path / "cache") == first
    assert checked == [model], "an unchanged checkpoint was checked twice"

    model.write_bytes(b"these are not weights")
    with pytest.raises(CheckpointError, match="cannot be used"):
        resolve_model(settings, cache_dir=tmp_path / "cache")
    with pytest.raises(CheckpointError, match="cannot be used"):
        resolve_model(settings, cache_dir=tmp_path / "cache")  # a failure is never remembered
    assert checked == [model] * 3


def test_a_pass_is_forgotten_when_the_checking_code_changes(tmp_path, tiny_model, monkeypatch):
    checked: list[Path] = []
    monkeypatch.setattr(am.model_source, "check_checkpoint", checked.append)
    settings = Settings(model=str(tiny_model))
    resolve_model(settings, cache_dir=tmp_path / "cache")
    monkeypatch.setattr(am.model_source, "CHECKER_LIBRARIES", (*am.model_source.CHECKER_LIBRARIES, "numpy"))
    resolve_model(settings, cache_dir=tmp_path / "cache")
    assert len(checked) == 2
