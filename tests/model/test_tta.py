"""Test-time augmentation: the views, their inverses, the average, and a real model made symmetric by it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from am.errors import InputError
from am.model.predict import Predictor
from am.model.tta import apply_view, averaged, undo_view, views


def test_each_mode_has_distinct_views_and_unknown_modes_name_the_valid_ones() -> None:
    asymmetric = torch.arange(16.0).reshape(1, 1, 4, 4)
    for mode, count in (("off", 1), ("rot180", 2), ("flips", 4), ("d4", 8)):
        images = {tuple(apply_view(asymmetric, view).flatten().tolist()) for view in views(mode)}
        assert len(views(mode)) == count and len(images) == count
    with pytest.raises(InputError, match="off, rot180, flips, d4"):
        views("d8")


@pytest.mark.parametrize("mode,shape", [("rot180", (2, 1, 5, 7)), ("flips", (2, 1, 5, 7)), ("d4", (2, 3, 6, 6))])
def test_undo_view_inverts_apply_view(mode: str, shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    for view in views(mode):
        assert torch.equal(undo_view(apply_view(x, view), view), x)
    if mode != "d4":  # a half turn and flips keep any shape; a quarter turn of d4 swaps height and width
        assert all(apply_view(x, view).shape == x.shape for view in views(mode))


def test_a_pixelwise_model_is_unchanged_by_averaging() -> None:
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for mode in ("off", "rot180", "flips", "d4"):
        torch.testing.assert_close(averaged(torch.sigmoid, x, mode), torch.sigmoid(x))


def test_the_average_is_the_mean_of_the_views_mapped_back() -> None:
    """A model that sees a ramp from left to right: each view sees it elsewhere; checked with numpy."""
    ramp = torch.linspace(0.0, 1.0, 6)

    def model(x: torch.Tensor) -> torch.Tensor:
        return x * ramp

    image = np.random.default_rng(2).random((6, 6)).astype(np.float32)
    x = torch.from_numpy(image)[None, None]
    w = ramp.numpy()
    expected = {
        "rot180": (image * w + (image[::-1, ::-1] * w)[::-1, ::-1]) / 2,
        "flips": (image * w + (image[:, ::-1] * w)[:, ::-1] + (image[::-1, ::-1] * w)[::-1, ::-1]
                  + (image[::-1] * w)[::-1]) / 4,
        "d4": sum(np.rot90(np.rot90(image, k) * w, -k) + np.rot90((np.rot90(image, k)[:, ::-1] * w)[:, ::-1], -k)
                  for k in range(4)) / 8,
    }
    for mode, want in expected.items():
        np.testing.assert_allclose(averaged(model, x, mode)[0, 0].numpy(), want, rtol=1e-6, atol=1e-6)


def test_d4_makes_a_real_model_answer_the_same_for_turned_and_mirrored_tiles(tiny_model: Path) -> None:
    predictor = Predictor.from_checkpoint(tiny_model, device="cpu", threads=1, batch_size=2)
    tile = np.random.default_rng(3).integers(0, 256, size=(1, 64, 64), dtype=np.uint8)
    turned = np.ascontiguousarray(np.rot90(tile, 1, axes=(1, 2)))
    mirrored = np.ascontiguousarray(tile[:, :, ::-1])
    base = predictor.predict_proba(tile, tta="d4")
    np.testing.assert_allclose(np.rot90(base, 1, axes=(1, 2)), predictor.predict_proba(turned, tta="d4"), atol=1e-5)
    np.testing.assert_allclose(base[:, :, ::-1], predictor.predict_proba(mirrored, tta="d4"), atol=1e-5)
    # Without TTA the untrained model is not symmetric, so the check above has teeth.
    plain = predictor.predict_proba(tile)
    assert np.abs(np.rot90(plain, 1, axes=(1, 2)) - predictor.predict_proba(turned)).max() > 1e-3


def test_rot180_makes_a_real_model_answer_the_same_for_a_tile_turned_half_a_turn(tiny_model: Path) -> None:
    predictor = Predictor.from_checkpoint(tiny_model, device="cpu", threads=1, batch_size=2)
    tiles = np.random.default_rng(5).integers(0, 256, size=(2, 64, 96), dtype=np.uint8)
    turned = np.ascontiguousarray(tiles[:, ::-1, ::-1])
    base = predictor.predict_proba(tiles, tta="rot180")
    assert base.shape == tiles.shape  # a half turn keeps a tile that is not square as it is
    np.testing.assert_allclose(base[:, ::-1, ::-1], predictor.predict_proba(turned, tta="rot180"), atol=1e-5)
    plain = predictor.predict_proba(tiles)
    assert np.abs(plain[:, ::-1, ::-1] - predictor.predict_proba(turned)).max() > 1e-3


def test_predictor_default_tta_and_per_call_choice(tiny_model: Path) -> None:
    tiles = np.random.default_rng(4).integers(0, 256, size=(3, 64, 96), dtype=np.uint8)
    plain = Predictor.from_checkpoint(tiny_model, device="cpu", threads=1, batch_size=2)
    flipped = Predictor.from_checkpoint(tiny_model, device="cpu", threads=1, batch_size=2, tta="flips")
    assert (plain.tta, flipped.tta) == ("off", "flips")
    proba = flipped.predict_proba(tiles)
    np.testing.assert_array_equal(proba, plain.predict_proba(tiles, tta="flips"))
    np.testing.assert_array_equal(flipped.predict_proba(tiles, tta="off"), plain.predict_proba(tiles))
    masks = flipped.predict(tiles)
    np.testing.assert_array_equal(masks, np.where(proba >= flipped.meta.threshold, 255, 0).astype(np.uint8))
    with pytest.raises(InputError, match="d8"):
        plain.predict(tiles, tta="d8")
    with pytest.raises(InputError, match="d8"):
        Predictor.from_checkpoint(tiny_model, device="cpu", tta="d8")
