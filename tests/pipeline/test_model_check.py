"""The model check runs once per checkpoint file and code, not on every run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import am.model_source
from am.errors import CheckpointError, ConfigError
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


def test_a_cache_that_cannot_be_written_costs_the_check_again_not_the_run(tmp_path, tiny_model, monkeypatch, caplog):
    """HOME=/proc/self stopped the pipeline: the checked-model marker is a cache, not an output."""
    checked: list[Path] = []
    monkeypatch.setattr(am.model_source, "check_checkpoint", checked.append)
    cache = tmp_path / "cache"
    cache.write_text("a file where the cache folder would be")  # refused as a folder, whoever runs the test
    settings = Settings(model=str(tiny_model))
    with caplog.at_level("WARNING", logger="am.model_source"):
        assert resolve_model(settings, cache_dir=cache)[0] == str(tiny_model.resolve())
        resolve_model(settings, cache_dir=cache)
    assert checked == [tiny_model.expanduser()] * 2  # nothing remembered: checked each time
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2 and f"passed the checkpoint check, but {cache} cannot be written" in said[0], said


def test_the_untrained_stand_in_needs_the_cache_and_says_so(tmp_path, monkeypatch):
    """Without a shipped model the workers load a file in the cache: no cache, no model, a clear error."""
    monkeypatch.setattr(am.model_source, "DEFAULT_MODEL", tmp_path / "absent.pt")
    cache = tmp_path / "cache"
    cache.write_text("not a folder")
    with pytest.raises(ConfigError, match=rf"untrained stand-in cannot be written to {cache} .*: pass --model with a "
                                          "checkpoint, or set XDG_CACHE_HOME to a writable folder"):
        resolve_model(Settings(), cache_dir=cache)
