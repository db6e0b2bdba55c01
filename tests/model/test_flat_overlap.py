"""Flat areas in the stitched mask: blanked in full from a tile overlap of twice the flat square's side.

Each tile blanks the flat squares it holds whole, and a pixel's own tile holds only
``tile_overlap / 2`` pixels beyond the seam; below :data:`am.settings.FLAT_OVERLAP` zero fill
across a seam stays marked, which the settings say when loaded.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import am.settings
from am.model.checkpoint import default_model_path, load_checkpoint
from am.model.flat import FLAT_SIDE, flat_areas
from am.model.predict import Predictor
from am.settings import FLAT_OVERLAP, load_settings
from am.tiling import Stitcher, plan_tiles, split


class Sure(torch.nn.Module):
    """Calls every pixel a mark (p = 0.993), so whatever is not blanked is marked."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x[:, :1], 5.0)


def _stitched(image: np.ndarray, overlap: int) -> np.ndarray:
    meta, _ = load_checkpoint(default_model_path())
    predictor = Predictor(Sure(), meta, device="cpu", postprocess=False, batch_size=4)
    plan = plan_tiles(*image.shape, tile_size=512, overlap=overlap)
    stitcher = Stitcher(plan)
    for tile, pixels in split(image, plan):
        stitcher.add(tile.index, predictor.predict(pixels[None])[0])
    return stitcher.finalize()


def test_the_least_overlap_is_twice_the_flat_side() -> None:
    assert FLAT_OVERLAP == 2 * FLAT_SIDE


@pytest.mark.parametrize("top", [416, 440, 460, 470, 480, 490])
def test_a_flat_square_across_a_seam_is_blank_at_the_least_overlap(top: int) -> None:
    # Tile 512, overlap 128 on 960 px: tiles at 0 and 448, the seam at 480.
    image = np.random.default_rng(0).integers(0, 256, (960, 960), dtype=np.uint8)
    image[top : top + FLAT_SIDE, 300 : 300 + FLAT_SIDE] = 0
    flat = flat_areas(image)
    assert flat.sum() == FLAT_SIDE**2
    mask = _stitched(image, FLAT_OVERLAP)
    assert not mask[flat].any() and mask[~flat].all()


def test_a_smaller_overlap_misses_some_and_the_settings_say_so(caplog: pytest.LogCaptureFixture) -> None:
    image = np.random.default_rng(0).integers(0, 256, (960, 960), dtype=np.uint8)
    image[470:534, 300:364] = 0
    assert _stitched(image, 64)[flat_areas(image)].any()
    am.settings._warned_overlap.clear()
    with caplog.at_level(logging.WARNING, logger="am.settings"):
        load_settings({"tile_overlap": 64})
        load_settings({"tile_overlap": 64})  # said once, not at every load
        load_settings({"tile_overlap": FLAT_OVERLAP})
        load_settings({})
    said = [r.getMessage() for r in caplog.records]
    assert said == ["tile_overlap 64 (on the command line) is below 128: zero fill and glare within 32 px of a "
                    "seam between tiles may be marked (a 64 px flat square must lie in the tile that writes the "
                    "pixel); set tile_overlap to 128 or more, with tile_size at least 256, to blank them all"]
