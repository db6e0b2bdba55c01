"""A model passed the checkpoint check once is not checked again only while the code that loads it is
unchanged: every module of am.model counts, not only checkpoint.py and build.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import am.model_source as model_source


@pytest.mark.parametrize("name", ["storage.py", "refine.py", "checkpoint.py"])
def test_editing_any_module_that_loading_uses_changes_the_fingerprint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     name: str) -> None:
    code = tmp_path / "model"
    shutil.copytree(model_source.MODEL_CODE, code, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(model_source, "MODEL_CODE", code)
    before = model_source._checker_fingerprint()
    assert model_source._checker_fingerprint() == before  # the same code, the same answer
    assert code / name in model_source.checker_sources()
    with (code / name).open("a") as module:
        module.write("\n# changed\n")
    assert model_source._checker_fingerprint() != before


def test_a_model_checked_before_is_checked_again_after_storage_py_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = tmp_path / "model"
    shutil.copytree(model_source.MODEL_CODE, code, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(model_source, "MODEL_CODE", code)
    checked: list[Path] = []
    monkeypatch.setattr(model_source, "check_checkpoint", checked.append)
    model = tmp_path / "m.pt"
    model.write_bytes(b"weights")
    model_source.check_checkpoint_once(model, "id", cache_dir=tmp_path / "cache")
    model_source.check_checkpoint_once(model, "id", cache_dir=tmp_path / "cache")
    assert checked == [model]  # remembered
    with (code / "storage.py").open("a") as module:
        module.write("\n# int8 unpacking changed\n")
    model_source.check_checkpoint_once(model, "id", cache_dir=tmp_path / "cache")
    assert checked == [model, model]
