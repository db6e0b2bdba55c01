"""Augmentations move labels exactly with the image they label."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from am.train.augment import flip_rotate, random_crop, shrink_apart


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


def _abutting_marks(size: int, pitch: int, side: int) -> np.ndarray:
    """A lattice of square marks ``side`` px wide, ``pitch`` px apart: a one-pixel seam where ``pitch = side + 1``."""
    mask = np.zeros((size, size), np.uint8)
    for y in range(0, size - side, pitch):
        for x in range(0, size - side, pitch):
            mask[y : y + side, x : x + side] = 1
    return mask


@pytest.mark.parametrize("window", [280, 300, 365])
def test_shrinking_keeps_abutting_marks_apart(window: int) -> None:
    # Every row and column of seam is one a plain shrink may drop; the marks must still count one each.
    mask = _abutting_marks(window, pitch=13, side=12)
    marks = cv2.connectedComponents(mask, connectivity=8)[0] - 1
    plain = cv2.resize(mask, (256, 256), interpolation=cv2.INTER_NEAREST_EXACT)
    assert cv2.connectedComponents(plain, connectivity=8)[0] - 1 < marks  # what the seam-blind shrink does
    shrunk = shrink_apart(mask, 256)
    assert shrunk.dtype == mask.dtype and set(np.unique(shrunk)) == {0, 1}
    assert cv2.connectedComponents(shrunk, connectivity=8)[0] - 1 == marks
    # Only seam pixels go back to the tissue: a mark loses at most one row and one column.
    assert shrunk.sum() >= plain.sum() * (1 - 2 / (12 * 256 / window))


def test_shrinking_a_crop_keeps_its_mask_values_and_its_single_marks_whole() -> None:
    mask = np.zeros((300, 300), np.uint8)
    cv2.circle(mask, (150, 150), 40, 255, -1)
    cv2.circle(mask, (40, 40), 20, 255, -1)  # apart from the first: nothing to cut
    shrunk = shrink_apart(mask, 200)
    assert np.array_equal(shrunk, cv2.resize(mask, (200, 200), interpolation=cv2.INTER_NEAREST_EXACT))


def test_zoomed_out_crops_of_a_dense_lattice_keep_every_mark_apart() -> None:
    mask = _abutting_marks(400, pitch=9, side=8)
    for seed in range(6):
        rng = np.random.default_rng(seed)
        _, crop, weight = random_crop(rng, mask * 255, mask, np.ones_like(mask), size=200, scale=(0.7, 0.95))
        _, _, stats, _ = cv2.connectedComponentsWithStats(crop, connectivity=8)
        # Marks of 8 px shrunk 0.7-0.95 times cover at most 8 x 8 px; a joined pair covers more.
        assert stats[1:, cv2.CC_STAT_AREA].max() <= 8 * 8, f"seed {seed}: marks joined"
        assert set(np.unique(weight)) == {1}


def test_flips_and_turns_move_all_three_arrays_alike() -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (40, 56), dtype=np.uint8)
    for seed in range(8):
        a, b, c = flip_rotate(np.random.default_rng(seed), image, image.copy(), image.copy())
        assert np.array_equal(a, b) and np.array_equal(a, c)
