"""Marks joined past every probability level, cut apart by the shape of the tile's lone marks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from am.errors import InputError
from am.model.checkpoint import ModelMeta
from am.model.masks import mask_from_proba, median_mark
from am.model.separate import OVERSIZE_FACTOR
from am.model.shape_cut import cut_by_shape
from am.pitch import estimate_pitch

META = ModelMeta(encoder="resnet18", threshold=0.5, seed_threshold=0.9, min_mark_px=40)
PITCH = 40
SIZE = 256
PLATEAU = 0.99  # as sure inside a mark as across the bridge: no level of step 2 shows two cores


def crescent(canvas: np.ndarray, centre: tuple[int, int]) -> None:
    """A crescent (an ellipse with a bite out of one side), the look of the real tile_a's marks."""
    row, col = centre
    mark = np.zeros_like(canvas, dtype=np.uint8)
    cv2.ellipse(mark, (col, row), (13, 9), 30, 0, 360, 1, thickness=-1)
    cv2.circle(mark, (col + 7, row - 6), 7, 0, thickness=-1)
    canvas[mark > 0] = PLATEAU


def lattice(*, joined: bool) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Probabilities of crescents on a 6 x 6 lattice of PITCH px; with ``joined`` the first two of the
    fourth row are bridged at the plateau's level. Returns it and the two bridged centres."""
    proba = np.zeros((SIZE, SIZE), np.float32)
    centres = [(28 + PITCH * r, 28 + PITCH * c) for r in range(6) for c in range(6)]
    for centre in centres:
        crescent(proba, centre)
    pair = [centres[18], centres[19]]
    if joined:
        (row, left), (_, right) = pair
        proba[row - 2 : row + 3, left : right + 1] = PLATEAU
    return proba, pair


def areas(mask: np.ndarray) -> list[int]:
    _, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return sorted(int(a) for a in stats[1:, cv2.CC_STAT_AREA])


def test_two_marks_bridged_at_the_plateau_level_are_cut_into_two_marks_of_their_shape() -> None:
    proba, pair = lattice(joined=True)
    joined = proba >= 0.5
    median = median_mark(joined, 40)
    assert median is not None and max(areas(joined)) >= OVERSIZE_FACTOR * median
    assert estimate_pitch(joined.astype(np.uint8) * 255) == pytest.approx(PITCH, abs=2)

    cut = cut_by_shape(joined, proba, median=median, factor=OVERSIZE_FACTOR)
    assert len(areas(cut)) == len(areas(joined)) + 1
    assert not (cut & ~joined).any(), "a cut never adds a pixel"
    removed = np.argwhere(joined & ~cut)
    assert 0 < len(removed) <= 12, "only a line across the bridge goes"
    lone, _ = lattice(joined=False)
    assert np.array_equal(cut[: pair[0][0] - 20], lone[: pair[0][0] - 20] >= 0.5), "other marks lose no pixel"
    _, labels = cv2.connectedComponents(cut.astype(np.uint8), connectivity=8)
    for row, col in pair:
        piece = labels == labels[row, col - 6]
        crescent_only = np.zeros_like(proba)
        crescent(crescent_only, (row, col))
        mark = crescent_only > 0
        iou = (piece & mark).sum() / (piece | mark).sum()
        assert iou >= 0.8, f"the piece at {(row, col)} is that crescent (IoU {iou:.2f})"


def test_the_checkpoint_mask_cuts_the_bridged_pair() -> None:
    proba, _ = lattice(joined=True)
    assert len(areas(mask_from_proba(proba, META))) == 36
    assert len(areas(mask_from_proba(proba, META, postprocess=False))) == 35


def test_one_lobed_mark_closer_than_the_lattice_allows_stays_whole() -> None:
    proba = np.zeros((SIZE, SIZE), np.float32)
    for r in range(6):
        for c in range(6):
            cv2.circle(proba, (28 + PITCH * c, 28 + PITCH * r), 8, PLATEAU, thickness=-1)
    cv2.circle(proba, (28 + PITCH * 2 + 12, 28 + PITCH * 3), 8, PLATEAU, thickness=-1)  # a second lobe, 0.3 pitch off
    mask = proba >= 0.5
    median = median_mark(mask, 40)
    assert median is not None and max(areas(mask)) >= OVERSIZE_FACTOR * median
    assert np.array_equal(cut_by_shape(mask, proba, median=median, factor=OVERSIZE_FACTOR), mask)
    assert len(areas(cut_by_shape(mask, proba, median=median, factor=OVERSIZE_FACTOR, min_spacing=0.2))) == 37, \
        "the spacing, not the fit, keeps it whole"


def test_a_tile_with_too_few_lone_marks_or_no_lattice_is_left_alone() -> None:
    proba, _ = lattice(joined=True)
    few = np.zeros_like(proba)
    few[128:170] = proba[128:170]  # the fourth row alone: the pair and four lone crescents
    mask = few >= 0.5
    assert len(areas(mask)) == 5
    assert np.array_equal(cut_by_shape(mask, few, median=float(np.median(areas(mask))), factor=1.5), mask)

    rng = np.random.default_rng(0)
    scattered = np.zeros((SIZE, SIZE), np.float32)
    for row, col in rng.uniform(20, SIZE - 20, size=(30, 2)).astype(int):
        crescent(scattered, (int(row), int(col)))
    proba_pair, _ = lattice(joined=True)
    scattered[100:160, 20:100] = proba_pair[100:160, 20:100]  # the bridged pair, among marks on no lattice
    mask = scattered >= 0.5
    assert estimate_pitch(mask.astype(np.uint8) * 255) is None, "marks scattered at random show no lattice"
    median = median_mark(mask, 40)
    assert median is not None and max(areas(mask)) >= OVERSIZE_FACTOR * median
    assert sum(0.75 * median <= a <= 1.33 * median for a in areas(mask)) >= 5, "enough lone marks for a shape"
    assert np.array_equal(cut_by_shape(mask, scattered, median=median, factor=OVERSIZE_FACTOR), mask)


def test_masks_and_probabilities_of_other_shapes_are_refused() -> None:
    with pytest.raises(InputError, match="same shape|one shape"):
        cut_by_shape(np.zeros((10, 10), bool), np.zeros((10, 12), np.float32), median=50.0, factor=1.7)
