"""Whole-image prediction blanks flat areas (README "From probabilities to masks", step 0) as the pipeline does.

Each window blanks only the flat squares it holds whole; where a flat area lies across the
overlap of two windows, one of them may hold under 64 px of it, and its raw answer was averaged
back in: evaluation, validation, mining and pseudo-labelling then marked zero fill and glare.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from am.model.checkpoint import default_model_path, load_checkpoint
from am.model.flat import flat_areas
from am.model.predict import Predictor
from am.model.whole import predict_image_mask, predict_image_proba


class Sure(torch.nn.Module):
    """Calls every pixel a mark (p = 0.993), so whatever is not blanked is marked."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x[:, :1], 5.0)


@pytest.fixture(scope="module")
def sure() -> Predictor:
    meta, _ = load_checkpoint(default_model_path())
    return Predictor(Sure(), meta, device="cpu", postprocess=False, batch_size=4)


@pytest.mark.parametrize("value", [0, 255])
def test_a_flat_square_across_two_windows_is_blank(sure: Predictor, value: int) -> None:
    # Tile 512: predict_image_proba's windows (overlap 64) start at 0 and 448, so each holds only part of
    # the square; predict_image_mask's pipeline tiles (overlap 128) start at 0, 384 and 448.
    image = np.random.default_rng(0).integers(0, 256, (960, 960), dtype=np.uint8)
    image[440:510, 440:510] = value
    flat = flat_areas(image)
    assert flat.sum() == 70 * 70
    proba = predict_image_proba(sure, image)
    assert proba[flat].max() == 0.0
    assert proba[~flat].min() > 0.99  # nothing else is blanked
    assert not predict_image_mask(sure, image)[flat].any()


def test_flat_areas_are_found_at_the_model_scale(sure: Predictor) -> None:
    # 40 px of fill are no flat area at scale 1, but 80 model pixels at scale 2: blank, as in the pipeline.
    image = np.random.default_rng(1).integers(0, 256, (480, 480), dtype=np.uint8)
    image[200:240, 200:240] = 0
    assert not flat_areas(image).any()
    assert predict_image_proba(sure, image).min() > 0.99
    proba = predict_image_proba(sure, image, scale=2.0)
    assert proba[205:235, 205:235].max() == 0.0
    assert proba[:150].min() > 0.99
