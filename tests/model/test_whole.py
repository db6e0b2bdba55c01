"""Whole-image prediction: overlapping windows reassemble exactly, rescaling returns the input's size."""

from __future__ import annotations

import numpy as np
import pytest

from am.errors import InputError
from am.model.checkpoint import tile_size_problem
from am.model.whole import default_overlap, predict_image_proba, scale_problem


class Echo:
    """Stands in for a Predictor: the 'probability' of a pixel is its grey value / 255."""

    batch_size = 3

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def predict_proba(self, tiles: np.ndarray) -> np.ndarray:
        assert tiles.dtype == np.uint8 and tiles.shape[1] % 32 == 0 and tiles.shape[2] % 32 == 0
        self.shapes.append(tiles.shape)
        return tiles.astype(np.float32) / 255.0


@pytest.mark.parametrize("shape", [(245, 245), (700, 1100), (64, 64), (33, 900)])
def test_windows_reassemble_the_image(shape: tuple[int, int]) -> None:
    image = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
    echo = Echo()
    out = predict_image_proba(echo, image, tile_size=256, overlap=32)
    assert out.shape == shape and out.dtype == np.float32
    np.testing.assert_allclose(out, image / 255.0, atol=1e-5)
    assert all(s[0] <= Echo.batch_size for s in echo.shapes)


def test_rescale_round_trip_keeps_size_and_values() -> None:
    # Grey ramps, not flat areas (which come back blank: see test_whole_flat.py).
    image = np.tile(np.linspace(150, 250, 245).astype(np.uint8), (245, 1))
    image[100:140, 100:140] = np.linspace(10, 50, 40).astype(np.uint8)
    out = predict_image_proba(Echo(), image, scale=2.04)
    assert out.shape == image.shape
    assert out[120, 120] == pytest.approx(image[120, 120] / 255, abs=0.02)
    assert out[10, 10] == pytest.approx(image[10, 10] / 255, abs=0.02)


def test_bad_arguments() -> None:
    with pytest.raises(InputError):
        predict_image_proba(Echo(), np.zeros((10, 10), dtype=np.float32))
    with pytest.raises(InputError):
        predict_image_proba(Echo(), np.zeros((10, 10), dtype=np.uint8), tile_size=100)


@pytest.mark.parametrize("tile_size", [64, 96, 128, 160])
def test_every_tile_size_a_checkpoint_may_hold_predicts(tile_size: int) -> None:
    # A model trained with --tile-size 64-128 is validated and evaluated on tiles of that size: a
    # fixed 64 px overlap was half of such a tile or more, and every validation failed.
    image = np.random.default_rng(2).integers(0, 256, size=(300, 230), dtype=np.uint8)
    echo = Echo()
    out = predict_image_proba(echo, image, tile_size=tile_size)
    np.testing.assert_allclose(out, image / 255.0, atol=1e-5)
    assert {s[1:] for s in echo.shapes} == {(tile_size, tile_size)}


def test_default_overlap_is_64_except_on_small_tiles() -> None:
    assert [default_overlap(t) for t in (64, 96, 128, 160, 256, 512)] == [16, 24, 32, 64, 64, 64]


def test_tile_size_and_scale_follow_the_checkpoint_rules() -> None:
    image = np.zeros((64, 64), dtype=np.uint8)
    with pytest.raises(InputError, match="tile_size 32 must be a multiple of 32 and at least 64"):
        predict_image_proba(Echo(), image, tile_size=32)
    with pytest.raises(InputError, match=r"overlap 64 must lie in \[0, 64\)"):
        predict_image_proba(Echo(), image, tile_size=128, overlap=64)
    assert tile_size_problem(32) == "tile_size 32 must be a multiple of 32 and at least 64"
    assert tile_size_problem(64) is None
    for scale in (25, 0.01, float("nan"), float("inf")):
        assert scale_problem(scale) == f"scale {scale} must lie between 0.05 and 20"
        with pytest.raises(InputError, match="must lie between 0.05 and 20"):
            predict_image_proba(Echo(), image, scale=scale)
    assert scale_problem(20) is None and scale_problem(0.05) is None


def test_progress_sees_every_batch_of_windows() -> None:
    image = np.random.default_rng(2).integers(0, 256, size=(700, 1100), dtype=np.uint8)
    echo, seen = Echo(), []

    def progress(batches, total, desc):
        seen.append((total, desc))
        for start in batches:
            seen.append(start)
            yield start

    out = predict_image_proba(echo, image, tile_size=256, overlap=32, progress=progress)
    np.testing.assert_allclose(out, image / 255.0, atol=1e-5)
    (total, desc), starts = seen[0], seen[1:]
    assert desc == "predicting the image" and total == len(echo.shapes) == len(starts) > 1
