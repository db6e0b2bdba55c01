"""The lobes of one mark, outlined apart by the model, joined again; marks of other nodes never."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from am.errors import InputError
from am.model.checkpoint import ModelMeta
from am.model.lobes import join_lobes
from am.model.masks import mask_from_proba, median_mark
from am.pitch import estimate_pitch

PITCH = 40
SIZE = 256
NODES = [(28 + PITCH * r, 28 + PITCH * c) for r in range(6) for c in range(6)]
LOBED = NODES[14]  # row 2, column 2: the mark drawn as two lobes


def lattice(*, lobe_gap: int) -> np.ndarray:
    """Discs of radius 8 on a 6 x 6 lattice of PITCH px; the mark at LOBED is two smaller lobes whose
    centres lie ``lobe_gap`` px apart (left and right of the node), with tissue between them."""
    mask = np.zeros((SIZE, SIZE), np.uint8)
    for row, col in NODES:
        if (row, col) == LOBED:
            for side in (-1, 1):
                cv2.circle(mask, (col + side * lobe_gap // 2, row), 4, 1, thickness=-1)
        else:
            cv2.circle(mask, (col, row), 8, 1, thickness=-1)
    return mask.astype(bool)


def components(mask: np.ndarray) -> int:
    return cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1


def test_two_lobes_a_quarter_pitch_apart_become_one_mark_gap_included() -> None:
    mask = lattice(lobe_gap=PITCH // 4)
    assert estimate_pitch(mask.astype(np.uint8) * 255) == pytest.approx(PITCH, abs=2)
    median = median_mark(mask, 40)
    assert median is not None
    joined = join_lobes(mask, median=median)
    assert components(joined) == components(mask) - 1 == 36
    assert not (mask & ~joined).any(), "joining never removes a pixel"
    row, col = LOBED
    assert joined[row, col] and not mask[row, col], "the gap between the lobes is filled"
    added = np.argwhere(joined & ~mask)
    assert added[:, 0].min() >= row - 4 and added[:, 0].max() <= row + 4, "only the hull between the lobes"
    assert np.array_equal(joined[: row - 10], mask[: row - 10]), "other marks are left as they were"


def test_marks_of_neighbouring_nodes_and_pieces_too_far_apart_are_not_joined() -> None:
    whole = lattice(lobe_gap=PITCH // 2)  # lobes half a pitch apart: as close as two rows that press together
    median = median_mark(whole, 40)
    assert median is not None
    assert np.array_equal(join_lobes(whole, median=median), whole)
    assert components(join_lobes(whole, median=median, spacing=0.6)) == 36, "the spacing is what keeps them apart"


def test_the_hull_stops_a_pixel_short_of_a_third_mark() -> None:
    mask = lattice(lobe_gap=PITCH // 4)
    row, col = LOBED
    other = np.zeros_like(mask)
    other[row - 16 : row - 7, col - 15 : col + 15] = True  # a mark too large to be a lobe, above them,
    other[row - 8 : row - 2, col] = True  # reaching down into the gap between them without touching them
    assert not (cv2.dilate(other.view(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & mask).any()
    mask = mask | other
    before = components(mask)
    joined = join_lobes(mask, median=float(median_mark(mask, 40)))
    assert components(joined) == before - 1, "the lobes join, and not with the mark above"
    assert joined[row, col] and not joined[row - 2, col]


def test_a_tile_without_a_lattice_and_a_tile_with_one_piece_are_left_alone() -> None:
    rng = np.random.default_rng(0)
    scattered = np.zeros((SIZE, SIZE), np.uint8)
    for row, col in rng.uniform(20, SIZE - 20, size=(25, 2)).astype(int):
        cv2.circle(scattered, (int(col), int(row)), 5, 1, thickness=-1)
    mask = scattered.astype(bool)
    assert estimate_pitch(scattered * 255) is None
    assert np.array_equal(join_lobes(mask, median=80.0), mask)
    one = np.zeros((SIZE, SIZE), bool)
    one[100:110, 100:110] = True
    assert np.array_equal(join_lobes(one, median=100.0), one)
    with pytest.raises(InputError, match="2-D"):
        join_lobes(np.zeros((2, 8, 8), bool), median=10.0)


def test_the_checkpoint_mask_joins_lobes_only_where_it_post_processes() -> None:
    proba = lattice(lobe_gap=PITCH // 4).astype(np.float32) * 0.99
    meta = ModelMeta(encoder="resnet18", threshold=0.5, seed_threshold=0.9, min_mark_px=20)
    assert components(mask_from_proba(proba, meta)) == 36
    assert components(mask_from_proba(proba, meta, postprocess=False)) == 37
    assert components(mask_from_proba(proba, ModelMeta(encoder="resnet18", threshold=0.5))) == 37
