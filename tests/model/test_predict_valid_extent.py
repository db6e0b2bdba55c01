"""Masks of an image smaller than a tile are made of the image part of the padded tile alone.

An image shorter or narrower than a tile is reflect-padded up to it. In the padding a mark cut by
the image edge meets its mirror image, away from every edge of the tile, and post-processing would
drop the pair as a speck; :meth:`Predictor.predict` with ``valid`` makes the mask of the image part
alone, where the cut mark touches the edge and is kept, as it is in a large image.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from am.errors import InputError
from am.model.checkpoint import ModelMeta
from am.model.masks import mask_from_proba
from am.model.predict import Predictor
from am.prepare import tile_valid_extent
from am.tiling import plan_tiles, read_tile
from tests.edge_scene import scene

TILE = 512
# Post-processing as shipped checkpoints ask for it: touching marks cut apart, specks of under
# 40 px or 0.3 of the median mark dropped unless they touch the edge.
META = ModelMeta(encoder="resnet18", threshold=0.5, seed_threshold=0.9, min_mark_px=40, min_mark_fraction=0.3,
                 trained=True)


class Bright(torch.nn.Module):
    """A perfect segmenter of white disks on dark tissue: probability about 1 on bright pixels, 0 on dark."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] * 10.0


class Everywhere(torch.nn.Module):
    """Marks every pixel, so that only the blanking of flat areas shows in the mask."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x[:, :1], 10.0)


def first_tile(image: np.ndarray) -> tuple[np.ndarray, tuple[int, int] | None]:
    plan = plan_tiles(*image.shape, tile_size=TILE, overlap=128)
    return read_tile(image, plan.tiles[0], plan), tile_valid_extent(plan)


def cut_mark(array: np.ndarray, height: int) -> np.ndarray:
    """The window around the visible part of the cut mark."""
    return array[height - 3 : height, 285:316]


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(Bright(), META, device="cpu", batch_size=4)


def test_the_extent_is_given_only_where_the_image_is_smaller_than_a_tile():
    assert tile_valid_extent(plan_tiles(300, 600, tile_size=TILE, overlap=128)) == (300, TILE)
    assert tile_valid_extent(plan_tiles(700, 200, tile_size=TILE, overlap=128)) == (TILE, 200)
    assert tile_valid_extent(plan_tiles(100, 80, tile_size=TILE, overlap=128)) == (100, 80)
    assert tile_valid_extent(plan_tiles(700, 600, tile_size=TILE, overlap=128)) is None
    assert tile_valid_extent(plan_tiles(TILE, TILE, tile_size=TILE, overlap=128)) is None


def test_a_mark_cut_by_the_edge_of_a_small_image_is_kept_with_its_extent(predictor: Predictor):
    image = scene(300, 600)
    tile, extent = first_tile(image)
    visible = int((cut_mark(image, 300) == 250).sum())
    assert extent == (300, TILE) and visible > 0

    padded = predictor.predict(tile[None])[0]
    cropped = predictor.predict(tile[None], valid=[extent])[0]

    # Made of the padded tile, the cut mark and its mirror image are one speck inside it: dropped.
    assert int((cut_mark(padded, 300) > 0).sum()) == 0
    assert int((cut_mark(cropped, 300) > 0).sum()) == visible
    # The image part's mask is that of the image part's probabilities alone; nothing is marked in the padding.
    proba = predictor.predict_proba(tile[None])[0]
    assert np.array_equal(cropped[:300] > 0, mask_from_proba(np.ascontiguousarray(proba[:300]), META))
    assert not cropped[300:].any()


def test_the_cut_mark_is_kept_as_in_a_large_image(predictor: Predictor):
    """A taller image of the same kind, whose bottom tile ends at the image edge, keeps its cut mark whole too."""
    large = scene(700, 600)
    plan = plan_tiles(700, 600, tile_size=TILE, overlap=128)
    bottom = plan.tiles[plan.cols]  # second row, first column: rows 188..699
    assert tile_valid_extent(plan) is None and bottom.y + TILE == 700
    mask = predictor.predict(read_tile(large, bottom, plan)[None])[0]
    visible = int((cut_mark(large, 700) == 250).sum())
    assert int((cut_mark(mask, TILE) > 0).sum()) == visible > 0


def test_tiles_of_a_call_may_have_different_extents_or_none(predictor: Predictor):
    small = scene(300, 600)
    tile, extent = first_tile(small)
    whole = scene(TILE, TILE, seed=1)
    masks = predictor.predict(np.stack([tile, whole, tile]), valid=[extent, None, extent])
    assert np.array_equal(masks[1], predictor.predict(whole[None])[0])
    assert np.array_equal(masks[0], masks[2])
    assert np.array_equal(masks[0], predictor.predict(tile[None], valid=[extent])[0])
    # An extent of the whole tile is no extent.
    assert np.array_equal(predictor.predict(whole[None], valid=[(TILE, TILE)]), predictor.predict(whole[None]))


def test_without_post_processing_the_mask_beyond_the_extent_is_zero():
    thresholded = Predictor(Bright(), META, device="cpu", postprocess=False)
    tile, extent = first_tile(scene(300, 600))
    plain = thresholded.predict(tile[None])[0]
    cropped = thresholded.predict(tile[None], valid=[extent])[0]
    assert plain[300:].any(), "the reflected marks in the padding are marked without an extent"
    assert not cropped[300:].any()
    assert np.array_equal(cropped[:300], plain[:300])


def test_flat_areas_are_found_in_the_image_part_alone():
    """A strip of zero fill 40 px high along the image's bottom edge is too thin to be blanked, as in a
    large image; reflected, it would be 79 px high and blanked."""
    marks_all = Predictor(Everywhere(), META, device="cpu", postprocess=False)
    image = scene(300, 600)
    image[260:] = 0
    tile, extent = first_tile(image)
    assert not marks_all.predict(tile[None])[0][260:300].any()
    assert marks_all.predict(tile[None], valid=[extent])[0][260:300].all()


@pytest.mark.parametrize(("valid", "message"), [
    ([(300, TILE)] * 2, "valid names the image part of 2 tile"),
    ([(TILE + 1, 10)], r"image part \(513, 10\) of tile 0 does not fit tiles of 512x512"),
    ([(0, 10)], r"image part \(0, 10\) of tile 0 does not fit"),
    ([(True, 10)], r"image part \(True, 10\) of tile 0 does not fit"),
    ([(10,)], r"image part \(10,\) of tile 0 does not fit"),
])
def test_an_extent_that_does_not_fit_is_refused_by_name(predictor: Predictor, valid, message):
    tile = np.zeros((1, TILE, TILE), np.uint8)
    with pytest.raises(InputError, match=message):
        predictor.predict(tile, valid=valid)
