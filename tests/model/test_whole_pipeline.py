"""am.evaluate predicts exactly the mask the pipeline writes for an image, the same model and settings given.

Its figures are documented as those of the pipeline's masks (README, "From probabilities to
masks"), but it used to blend probabilities over windows of its own: on an image smaller than a
tile a window of the image's own size, where the pipeline reflect-pads a full tile and makes the
mask of the image part alone. Real crop2 (245 px) then agreed with the pipeline's mask.tiff at
Dice 0.38, and scored 0.15 against its reference where the pipeline's mask scores 0.45.

Here the pipeline runs in-process from its own stages: :func:`am.prepare.prepare_group` normalises
and cuts the tiles to disk, each tile's mask is made as a worker makes it (the tile file read back,
:meth:`Predictor.predict` with the plan's valid extent, the extent the orchestrator's messages
carry), written as a mask tile, and :func:`am.stitch.stitch_mask` writes mask.tiff.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from am.dataset import DatasetLayout
from am.evaluate.run import evaluate
from am.imageio import read_image, write_png
from am.model.checkpoint import default_model_path
from am.model.predict import Predictor
from am.prepare import prepare_group, tile_valid_extent
from am.settings import Settings
from am.stitch import stitch_mask
from am.synth.dataset import sample_at
from am.train.data import Labelled
from tests.real_samples import real_sample

GROUP = "g1"


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    # fp32: the precision both sides are given here, and the one the README's figures are measured in.
    return Predictor.from_checkpoint(default_model_path(), device="cpu", threads=2, precision="fp32")


def pipeline_mask(predictor: Predictor, source: Path, root: Path, *,
                  scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(normalised image, mask.tiff as bool) of ``source`` through the pipeline's stages, in-process."""
    folder = root / "source" / GROUP
    folder.mkdir(parents=True)
    shutil.copy(source, folder / source.name)
    layout = DatasetLayout(root)
    prepared = prepare_group(layout, GROUP, settings=Settings(scale=scale), model_id="default")
    extent = tile_valid_extent(prepared.plan)
    for tile in prepared.plan.tiles:
        pixels = read_image(layout.tile_source(GROUP, tile.index))
        extra = {} if extent is None else {"valid": [extent]}
        write_png(layout.tile_mask(GROUP, tile.index), predictor.predict(pixels[None], **extra)[0])
    stitch_mask(layout, prepared)
    return read_image(layout.source_norm(GROUP)), read_image(layout.stitched_mask(GROUP)) > 0


def evaluated_mask(predictor: Predictor, image: np.ndarray, *, scale: float = 1.0) -> np.ndarray:
    """The mask am.evaluate scores for ``image`` (already normalised, as its readers give it)."""
    item = Labelled.from_arrays(image, np.zeros(image.shape, np.uint8), name="image")
    [result] = evaluate(predictor, [item], scale=scale, keep_predicted=True)
    assert result.predicted is not None
    return result.predicted


def synthetic_png(path: Path, *, rows: int, cols: int, index: int) -> Path:
    """A synthetic microscopy image of ``rows`` x ``cols`` px (cut from a rendered one), written as PNG."""
    size = max(rows, cols) + (-max(rows, cols)) % 32
    write_png(path, sample_at(7, index, size=size).image[:rows, :cols])
    return path


@pytest.mark.parametrize(("rows", "cols", "index"), [(245, 245, 0), (300, 200, 1)])
def test_an_image_smaller_than_a_tile_gets_the_pipelines_mask(tmp_path, predictor, rows, cols, index) -> None:
    source = synthetic_png(tmp_path / "image.png", rows=rows, cols=cols, index=index)
    image, expected = pipeline_mask(predictor, source, tmp_path / "ds")
    assert expected.any(), "the model found no mark: the comparison would prove nothing"
    np.testing.assert_array_equal(evaluated_mask(predictor, image), expected)


def test_an_image_of_several_tiles_gets_the_pipelines_mask(tmp_path, predictor) -> None:
    # 2 x 2 tiles of 512 px overlapping by 128 or more: stitched by ownership, not blended.
    source = synthetic_png(tmp_path / "image.png", rows=700, cols=620, index=6)
    image, expected = pipeline_mask(predictor, source, tmp_path / "ds")
    assert expected.any()
    np.testing.assert_array_equal(evaluated_mask(predictor, image), expected)


@pytest.mark.parametrize("scale", [1.0, 2.04])
def test_real_crop2_gets_the_pipelines_mask(tmp_path, predictor, scale) -> None:
    # The reviewer's case: 245 px, one padded tile at scale 1, 500 px of a padded tile at 2.04.
    image, expected = pipeline_mask(predictor, real_sample("crop2_image.png"), tmp_path / "ds", scale=scale)
    np.testing.assert_array_equal(evaluated_mask(predictor, image, scale=scale), expected)


def test_an_image_the_pipeline_refuses_gets_no_mask(predictor) -> None:
    from am.errors import InputError
    from am.model.whole import predict_image_mask

    with pytest.raises(InputError, match=r"the image is 20 x 40 px .*at least 32 px on each side"):
        predict_image_mask(predictor, np.zeros((20, 40), np.uint8))
    with pytest.raises(InputError, match=r"24 x 24 px at --scale 0.6.*use a larger crop, or a larger scale"):
        predict_image_mask(predictor, np.zeros((40, 40), np.uint8), scale=0.6)
    assert predict_image_mask(predictor, np.zeros((32, 32), np.uint8)).shape == (32, 32)
