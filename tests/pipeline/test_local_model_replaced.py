"""A local checkpoint replaced in its file while a run segments its tiles.

Its SHA-256 is taken at the start and recorded in each group's meta.json, while the workers load
the file as it is when they start. Masks of a file replaced in between came from other weights
than the recorded ones, and every rerun with the first checkpoint reused them. As for an s3://
checkpoint uploaded again under its key, the run now fails before stitching and removes the
groups' tile plans.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from faults.harness import make_dataset

from am.dataset import DatasetLayout
from am.errors import ModelReplaced
from am.job import Job
from am.orchestrator import run_pipeline
from am.settings import Settings

SETTINGS = Settings(tile_size=64, tile_overlap=16, workers=1)


def test_a_local_checkpoint_replaced_while_the_tiles_are_segmented_fails_the_run_before_stitching(
        tiny_model, tmp_path, monkeypatch) -> None:
    from am.model.build import write_test_checkpoint

    model = shutil.copy(tiny_model, tmp_path / "model.pt")
    retrained = write_test_checkpoint(tmp_path / "retrained.pt", seed=1)
    dataset = make_dataset(tmp_path / "ds", {"g1": (150, 170)})
    wait = Job.wait

    def wait_then_replace(job: Job) -> None:
        wait(job)
        os.replace(retrained, model)

    monkeypatch.setattr(Job, "wait", wait_then_replace)
    with pytest.raises(ModelReplaced, match=rf"model {model} was replaced while this run segmented its tiles "
                                            r"\(SHA-256 \w{12} at the start, \w{12} now\)"):
        run_pipeline(dataset, settings=SETTINGS.replace(model=str(model)), register=False,
                     cache_dir=tmp_path / "cache", show_progress=False)
    layout = DatasetLayout(dataset)
    assert not layout.tile_plan("g1").exists(), "a later run would reuse masks of two checkpoints"
    assert not (dataset / "tiles_stitched" / "g1" / "mask.tiff").exists()


def test_an_unchanged_local_checkpoint_is_stitched(tiny_model, tmp_path) -> None:
    dataset = make_dataset(tmp_path / "ds", {"g1": (150, 170)})
    run_pipeline(dataset, settings=SETTINGS.replace(model=str(Path(tiny_model))), register=False,
                 cache_dir=tmp_path / "cache", show_progress=False)
    assert DatasetLayout(dataset).tile_plan("g1").exists()
    assert (dataset / "tiles_stitched" / "g1" / "mask.tiff").exists()
