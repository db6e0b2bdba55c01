"""Deciding whether a rerun has anything to segment reads the group's meta.json once.

A group whose tile went missing is refused for reuse and cut again with every mask kept; the
decision to reuse, the decision to re-cut and the re-cut itself all go by the same reading.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from faults.harness import make_dataset

from am.dataset import DatasetLayout
from am.imageio import write_png
from am.prepare import prepare_group, reuse_or_recut_group
from am.settings import Settings

SETTINGS = Settings(tile_size=64, tile_overlap=16)
MODEL = "m"


@pytest.fixture
def finished(tmp_path: Path) -> DatasetLayout:
    """A group as a finished run leaves it: every tile cut, every tile with its mask."""
    layout = DatasetLayout(make_dataset(tmp_path / "ds", {"g1": (150, 170)}))
    prepared = prepare_group(layout, "g1", settings=SETTINGS, model_id=MODEL)
    for index in prepared.pending:
        write_png(layout.tile_mask("g1", index), np.zeros((SETTINGS.tile_size,) * 2, np.uint8))
    return layout


def plan_reads(monkeypatch: pytest.MonkeyPatch, plan: Path) -> list[Path]:
    """Every read of ``plan`` from now on."""
    reads: list[Path] = []
    read_text = Path.read_text

    def recording(self: Path, *args: object, **kwargs: object) -> str:
        if self == plan:
            reads.append(self)
        return read_text(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", recording)
    return reads


def test_a_group_with_a_tile_missing_is_cut_again_from_one_reading_of_its_plan(
        finished: DatasetLayout, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = finished.tile_source("g1", 1)
    missing.unlink()
    masks = {path: path.read_bytes() for path in finished.tile_mask("g1", 0).parent.iterdir()}
    reads = plan_reads(monkeypatch, finished.tile_plan("g1"))
    prepared = reuse_or_recut_group(finished, "g1", settings=SETTINGS, model_id=MODEL)
    assert prepared is not None and prepared.pending == () and prepared.n_tiles == len(masks)
    assert missing.is_file(), "cut again"
    assert {path: path.read_bytes() for path in masks} == masks
    assert len(reads) == 1


def test_a_reusable_group_is_reused_from_one_reading_of_its_plan(
        finished: DatasetLayout, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = plan_reads(monkeypatch, finished.tile_plan("g1"))
    prepared = reuse_or_recut_group(finished, "g1", settings=SETTINGS, model_id=MODEL)
    assert prepared is not None and prepared.pending == ()
    assert len(reads) == 1


def test_a_group_whose_masks_were_made_by_another_model_is_left_to_the_job(
        finished: DatasetLayout, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = plan_reads(monkeypatch, finished.tile_plan("g1"))
    assert reuse_or_recut_group(finished, "g1", settings=SETTINGS, model_id="another") is None
    assert len(reads) == 1
