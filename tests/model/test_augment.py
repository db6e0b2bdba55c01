"""Augmentations move labels exactly with the image they label."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from am.train.augment import flip_rotate, random_crop


def _mean_shift(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean (dy, dx) from each whole mark's centre in the image (intensity-weighted) to its mask's centre."""
    count, _, stats, centres = cv2.connectedComponentsWithStats((mask > 127).astype(np.uint8))
    shifts = []
    for label in range(1, count):
        x, y, w, h = stats[label, :4]
        if x == 0 or y == 0 or x + w == mask.shape[1] or y + h == mask.shape[0]:
            continue  # cut by the crop's edge
        box = image[y - 1 : y + h + 1, x - 1 : x + w + 1].astype(np.float64)
        ys, xs = np.mgrid[y - 1 : y + h + 1, x - 1 : x + w + 1]
        shifts.append(centres[label][::-1] - ((ys * box).sum() / box.sum(), (xs * box).sum() / box.sum()))
    assert shifts, "no whole mark in the crop"
    return np.mean(shifts, axis=0)


@pytest.mark.parametrize("zoom", [(0.7, 0.7), (1.4, 1.4), (0.83, 0.83), (1.21, 1.21)])
def test_zoomed_crops_keep_masks_on_their_marks(zoom: tuple[float, float]) -> None:
    # The image and its mask are the same drawing, so after any zoom their marks must coincide.
    drawing = np.zeros((300, 300), np.uint8)
    for y in range(30, 300, 60):
        for x in range(30, 300, 60):
            cv2.circle(drawing, (x, y), 11, 255, -1)
    for seed in range(4):
        rng = np.random.default_rng(seed)
        image, mask, weight = random_crop(rng, drawing, drawing, np.ones_like(drawing), size=160, scale=zoom)
        assert set(np.unique(mask)) <= {0, 255} and set(np.unique(weight)) == {1}
        shift = _mean_shift(image, mask)
        assert np.all(np.abs(shift) < 0.15), f"mask {shift} px off the image's marks at zoom {zoom[0]}"
        disagree = np.mean((mask > 127) != (image > 127))
        assert disagree < 0.02


def test_flips_and_turns_move_all_three_arrays_alike() -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (40, 56), dtype=np.uint8)
    for seed in range(8):
        a, b, c = flip_rotate(np.random.default_rng(seed), image, image.copy(), image.copy())
        assert np.array_equal(a, b) and np.array_equal(a, c)
