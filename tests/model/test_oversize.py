"""Marks pressed together past the seed level: cut apart only inside components far larger than a mark."""

from __future__ import annotations

import cv2
import numpy as np

from am.model.checkpoint import ModelMeta
from am.model.masks import mask_from_proba, median_mark
from am.model.separate import OVERSIZE_FACTOR, separate_touching, split_oversize

META = ModelMeta(encoder="resnet18", threshold=0.5, seed_threshold=0.9, min_mark_px=40)
RADIUS = 10


def disc(proba: np.ndarray, centre: tuple[int, int], radius: int = RADIUS, level: float = 0.99) -> None:
    cv2.circle(proba, (centre[1], centre[0]), radius, level, thickness=-1)


def pressed_pair(shape: tuple[int, int] = (200, 260), lone_marks: int = 9) -> tuple[np.ndarray, int]:
    """Probabilities of ``lone_marks`` single discs and one pair whose contact stays at 0.93: above
    the seed level (0.9), under the first higher level (0.95). Returns it and the contact column."""
    proba = np.zeros(shape, dtype=np.float32)
    for i in range(lone_marks):
        disc(proba, (30 + 50 * (i // 5), 30 + 45 * (i % 5)))
    left, right = (160, 60), (160, 60 + 2 * RADIUS + 3)
    disc(proba, left)
    disc(proba, right)
    contact = 60 + RADIUS + 1
    proba[156:165, contact - 2 : contact + 3] = np.maximum(proba[156:165, contact - 2 : contact + 3], 0.93)
    return proba, contact


def components(mask: np.ndarray) -> list[int]:
    _, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return sorted(int(a) for a in stats[1:, cv2.CC_STAT_AREA])


def test_a_pair_joined_above_the_seed_level_is_cut_along_its_contact() -> None:
    proba, contact = pressed_pair()
    joined = separate_touching(proba, threshold=0.5, seed_threshold=0.9)
    assert len(components(joined)) == 10, "the pair keeps one core at the seed level"
    median = median_mark(joined, 40)
    assert median is not None and max(components(joined)) >= OVERSIZE_FACTOR * median

    cut = split_oversize(joined, proba, median=median)
    areas = components(cut)
    assert len(areas) == 11
    assert not (cut & ~joined).any(), "a cut never adds a pixel"
    removed = np.argwhere(joined & ~cut)
    assert len(removed) > 0 and set(removed[:, 1]) <= {contact - 1, contact, contact + 1}
    single = components(proba >= 0.5)[0]
    assert all(a >= 0.8 * single for a in areas), "each half of the pair is about one mark"


def test_the_checkpoint_mask_cuts_the_pair_and_leaves_everything_else_as_thresholded() -> None:
    proba, _ = pressed_pair()
    mask = mask_from_proba(proba, META)
    assert len(components(mask)) == 11
    assert np.array_equal(mask[:120], proba[:120] >= 0.5), "the lone marks lose no pixel"
    assert len(components(mask_from_proba(proba, META, postprocess=False))) == 10


def test_a_large_single_mark_and_a_tile_with_few_marks_are_left_alone() -> None:
    proba = np.zeros((200, 260), dtype=np.float32)
    for i in range(9):
        disc(proba, (30 + 50 * (i // 5), 30 + 45 * (i % 5)))
    disc(proba, (160, 120), radius=16)  # 2.5 marks of area, one plateau: one core at every level
    assert np.array_equal(mask_from_proba(proba, META), proba >= 0.5)

    few, _ = pressed_pair(lone_marks=5)  # too few marks for a median: nothing to compare with
    assert median_mark(few >= 0.5, 40) is None
    assert len(components(mask_from_proba(few, META))) == 6


def test_a_pair_no_larger_than_the_factor_is_not_looked_at_again() -> None:
    proba, _ = pressed_pair()
    joined = separate_touching(proba, threshold=0.5, seed_threshold=0.9)
    median = median_mark(joined, 40)
    assert median is not None
    pair = max(components(joined))
    assert np.array_equal(split_oversize(joined, proba, median=median, factor=pair / median + 0.01), joined)
