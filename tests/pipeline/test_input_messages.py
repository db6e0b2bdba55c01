"""Inputs the pipeline refuses, and what it says about them.

- an image thinner than the model can see (a 1 px strip was segmented into stripes) is refused
  before anything starts, naming the file and its size;
- a file given where the dataset folder goes is called a file, not a missing folder;
- a damaged intermediate file (a tile, a mask tile, meta.json) gets one instruction, the one
  that fits a file the pipeline wrote itself, and one warning per run.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator

import cv2
import numpy as np
import pytest
from faults.harness import make_dataset

import am.orchestrator
from am.dataset import DatasetLayout
from am.errors import InputError
from am.job import tile_pixels
from am.orchestrator import run_pipeline
from am.pipeline.__main__ import main as pipeline_main
from am.prepare import MIN_IMAGE_SIDE_PX, check_image_size, prepare_group
from am.settings import Settings
from am.stitch import stitch_mask

SETTINGS = Settings(tile_size=64, tile_overlap=16)


@pytest.mark.parametrize("size", [(360, 1), (1, 360), (1, 1), (MIN_IMAGE_SIDE_PX - 1, 200)],
                         ids=["1px-wide", "1px-high", "1x1", "just-too-thin"])
def test_an_image_too_thin_for_the_model_is_refused_before_anything_starts(tmp_path, tiny_model, monkeypatch, size):
    dataset = make_dataset(tmp_path / "ds", {"g1": (200, 200), "thin": size})

    def no_backend(*args, **kwargs):
        raise AssertionError("a backend was opened for a dataset that cannot be segmented")

    monkeypatch.setattr(am.orchestrator, "open_backend", no_backend)
    with pytest.raises(InputError) as refused:
        run_pipeline(dataset, settings=SETTINGS.replace(model=str(tiny_model)), register=False,
                     cache_dir=tmp_path / "cache", show_progress=False)
    message = str(refused.value)
    image = DatasetLayout(dataset).source_image("thin")
    assert str(image) in message and f"is {size[0]} x {size[1]} px (height x width)" in message
    assert f"at least {MIN_IMAGE_SIDE_PX} px on each side" in message
    assert not (dataset / "tiles").exists() and not (dataset / "source_norm").exists()


def test_the_minimum_side_applies_at_the_models_scale():
    check_image_size(MIN_IMAGE_SIDE_PX, 500, scale=1.0, name="a.tif")
    check_image_size(2 * MIN_IMAGE_SIDE_PX, 500, scale=0.5, name="a.tif")
    with pytest.raises(InputError, match=r"is 62 x 500 px \(height x width, 31 x 250 px at --scale 0.5\).*"
                                         r"or a larger --scale"):
        check_image_size(62, 500, scale=0.5, name="a.tif")
    check_image_size(MIN_IMAGE_SIDE_PX // 2, 500, scale=2.0, name="a.tif")


def test_a_scale_that_would_make_the_image_larger_than_any_image_may_be_is_refused():
    check_image_size(4000, 4000, scale=10.0, name="a.tif")  # 40000 x 40000: the most an image may have
    with pytest.raises(InputError, match=r"a.tif is 20000 x 20000 px \(height x width\); at --scale 10 it would be "
                                         r"200000 x 200000 px, more than the 1600000000 px .* give --scale 2 or less"):
        check_image_size(20000, 20000, scale=10.0, name="a.tif")


def test_the_pipeline_refuses_an_image_its_scale_makes_too_large_before_anything_starts(tmp_path, tiny_model,
                                                                                       monkeypatch):
    """Resized in one piece, 4100 x 4100 px at --scale 10 would have cost 1.7 GB at once (a 20000 px image 40 GB)."""
    source = tmp_path / "ds" / "source" / "g1"
    source.mkdir(parents=True)
    cv2.imwrite(str(source / "image.png"), np.zeros((4100, 4100), np.uint8))
    monkeypatch.setattr(am.orchestrator, "open_backend", lambda *a, **k: pytest.fail("a backend was opened"))
    with pytest.raises(InputError, match=r"at --scale 10 it would be 41000 x 41000 px.* give --scale 9.75 or less"):
        run_pipeline(tmp_path / "ds", settings=SETTINGS.replace(model=str(tiny_model), scale=10.0), register=False,
                     cache_dir=tmp_path / "cache", show_progress=False)
    assert not (tmp_path / "ds" / "tiles").exists() and not (tmp_path / "ds" / "source_norm").exists()


def test_the_tiler_refuses_a_thin_image_without_touching_earlier_results(tmp_path):
    layout = DatasetLayout(make_dataset(tmp_path / "ds", {"g1": (360, 1)}))
    stitched = layout.stitched_mask("g1")
    stitched.parent.mkdir(parents=True)
    stitched.write_bytes(b"earlier")
    with pytest.raises(InputError, match=r"is 360 x 1 px"):
        prepare_group(layout, "g1", settings=SETTINGS, model_id="m")
    assert stitched.read_bytes() == b"earlier" and not layout.tiles_dir("g1").exists()


@pytest.fixture
def keep_sigterm() -> Iterator[None]:
    """The command line installs its own SIGTERM handler; the test process gets its own back."""
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


def test_a_file_given_as_the_dataset_is_called_a_file(tmp_path, capsys, keep_sigterm):
    image = tmp_path / "image.tif"
    image.write_bytes(b"II*\x00")
    with pytest.raises(InputError, match=r"image\.tif is a file, not a dataset folder; pass the folder that holds "
                                         r"source/<group>/<image>"):
        DatasetLayout(image).groups()
    assert pipeline_main([str(image), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"{image} is a file, not a dataset folder" in err and "does not exist" not in err


def test_a_damaged_tile_file_gets_the_reason_and_one_instruction(tmp_path):
    layout = DatasetLayout(make_dataset(tmp_path / "ds", {"g1": (150, 150)}))
    prepare_group(layout, "g1", settings=SETTINGS, model_id="m")
    tile = layout.tile_source("g1", 0)
    tile.write_bytes(tile.read_bytes()[:100])
    with pytest.raises(InputError) as damaged:
        tile_pixels(tile, size=64)
    message = str(damaged.value)
    assert message == (f"tile file {tile} cannot be read (it is truncated: its 'IDAT' chunk at byte 33 runs past "
                       "the end of the file (100 bytes)); "
                       f"delete {layout.tiles_dir('g1')} so that the next run cuts the group again")


def test_a_damaged_mask_tile_gets_the_reason_and_one_instruction(tmp_path):
    layout = DatasetLayout(make_dataset(tmp_path / "ds", {"g1": (150, 150)}))
    prepared = prepare_group(layout, "g1", settings=SETTINGS, model_id="m")
    for tile in prepared.plan.tiles:
        layout.tile_mask("g1", tile.index).parent.mkdir(parents=True, exist_ok=True)
        layout.tile_mask("g1", tile.index).write_bytes(layout.tile_source("g1", tile.index).read_bytes())
    mask = layout.tile_mask("g1", 0)
    mask.write_bytes(mask.read_bytes()[:100])
    with pytest.raises(InputError) as damaged:
        stitch_mask(layout, prepared)
    assert str(damaged.value) == (f"mask tile {mask} is damaged (its 100 bytes cannot be decoded (truncated or not "
                                  "a PNG)); delete it and rerun the same command to make it again")


def test_a_damaged_tile_plan_is_warned_about_once(tmp_path, caplog):
    layout = DatasetLayout(make_dataset(tmp_path / "ds", {"g1": (150, 150)}))
    prepare_group(layout, "g1", settings=SETTINGS, model_id="m")
    plan = layout.tile_plan("g1")
    plan.write_text(plan.read_text()[:20])
    caplog.set_level(logging.WARNING, logger="am.prepare")
    # As a run does: decide on reuse from meta.json, then cut the group again.
    prepared = prepare_group(layout, "g1", settings=SETTINGS, model_id="m")
    warnings = [r.getMessage() for r in caplog.records if "ignoring unreadable tile plan" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert prepared.pending == tuple(range(prepared.n_tiles))


def test_an_overlay_over_a_normalised_image_of_another_size_names_the_file_and_the_cure(tmp_path):
    import numpy as np

    from am.imageio import write_tiff
    from am.stitch import write_mask_overlay

    layout = DatasetLayout(tmp_path / "ds")
    layout.source_norm("g").parent.mkdir(parents=True)
    write_tiff(layout.source_norm("g"), np.zeros((100, 100), np.uint8), compress=False)
    with pytest.raises(InputError) as refused:
        write_mask_overlay(layout, "g", np.zeros((120, 90), np.uint8))
    assert str(refused.value) == (
        f"{layout.source_norm('g')} is 100 x 100 px but group g's mask is 90 x 120 px: delete it and rerun "
        f"python -m am.pipeline {layout.root} g, which normalises the image again")
    assert not layout.stitched_overlay("g").exists()
