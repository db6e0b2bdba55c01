"""Large areas of one grey level (zero fill, clipped glare) are blanked: the model's answer there means nothing."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import am.model.predict as predict_module
from am.model.checkpoint import default_model_path
from am.model.flat import FLAT_SIDE, flat_areas
from am.model.predict import Predictor
from am.synth.dataset import random_sample


def test_flat_areas_cover_the_fill_and_nothing_of_the_picture() -> None:
    rng = np.random.default_rng(0)
    tile = np.zeros((256, 256), np.uint8)
    tile[64:192, 64:192] = rng.integers(1, 256, (128, 128))
    blank = flat_areas(tile)
    assert not blank[64:192, 64:192].any()
    assert blank.sum() == 256 * 256 - 128 * 128  # every fill pixel, those beside the picture included
    # Marks clipped to white: the largest (radius 42 px) and a chain of abutting ones, thousands of
    # flat pixels together, hold no flat square of FLAT_SIDE and stay.
    yy, xx = np.mgrid[:256, :256]
    clipped = tile.copy()
    clipped[(yy - 128) ** 2 + (xx - 128) ** 2 <= 42**2] = 255
    for cx in (40, 124, 208):
        clipped[(yy - 40) ** 2 + (xx - cx) ** 2 <= 42**2] = 255
    assert np.count_nonzero(clipped == 255) > 4 * FLAT_SIDE**2
    assert not flat_areas(clipped)[64:192, 64:192].any()
    # A fill narrower than FLAT_SIDE is left to the model; one as wide is blank.
    strip = rng.integers(1, 256, (256, 256)).astype(np.uint8)
    strip[:, : FLAT_SIDE - 1] = 0
    assert not flat_areas(strip).any()
    strip[:, : FLAT_SIDE] = 0
    assert flat_areas(strip).sum() == 256 * FLAT_SIDE
    # One grey level everywhere, and a stack of tiles.
    assert flat_areas(np.full((80, 80), 7, np.uint8)).all()
    stack = np.stack([tile, rng.integers(0, 256, (256, 256)).astype(np.uint8)])
    assert flat_areas(stack)[0].sum() == blank.sum() and not flat_areas(stack)[1].any()
    assert flat_areas(np.zeros((0, 8, 8), np.uint8)).shape == (0, 8, 8)


@pytest.fixture(scope="module")
def padded_tile() -> np.ndarray:
    """A synthetic picture in the right half of a tile whose left half is zero fill, as around a mosaic."""
    sample = random_sample(np.random.default_rng(5), size=512, pitch_range=(30.0, 40.0))
    tile = np.zeros((512, 512), np.uint8)
    tile[:, 256:] = sample.image[:, 256:]
    return tile


@pytest.mark.parametrize("postprocess", [True, False])
def test_the_model_draws_no_marks_on_zero_fill(padded_tile: np.ndarray, postprocess: bool,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    predictor = Predictor.from_checkpoint(default_model_path(), device="cpu", threads=2, postprocess=postprocess)
    tiles = np.stack([padded_tile, np.zeros((512, 512), np.uint8)])
    masks = predictor.predict(tiles)
    proba = predictor.predict_proba(tiles)
    assert not masks[:, :, :256].any() and not masks[1].any()
    assert proba[:, :, :256].max() == 0 and proba[1].max() == 0
    assert masks[0, :, 256:].any()  # the picture's marks are still found
    # Without the blanking the model answers the fill with false marks.
    monkeypatch.setattr(predict_module, "flat_areas", lambda t: np.zeros(t.shape, bool))
    unblanked = predictor.predict(tiles)
    assert unblanked[:, :, :250].any()
    # The picture's marks are the same; with post-processing a cut line may fall a pixel apart, since
    # the template and pitch of step 2's shape cut are read from the whole tile, fill's false marks included.
    picture, unblanked_picture = masks[0, :, 260:], unblanked[0, :, 260:]
    count = cv2.connectedComponents(picture.view(np.uint8))[0]
    assert cv2.connectedComponents(unblanked_picture.view(np.uint8))[0] == count
    assert np.count_nonzero(picture != unblanked_picture) <= (8 if postprocess else 0)
