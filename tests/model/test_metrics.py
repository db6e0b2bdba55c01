"""Evaluation metrics on hand-made masks whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from am.evaluate.lost import lost_marks
from am.evaluate.metrics import EdgeErrors, Scores, edge_errors, match_objects, most_wrong, score


def _square(shape, y, x, size):
    m = np.zeros(shape, dtype=np.uint8)
    m[y : y + size, x : x + size] = 255
    return m


def test_identical_masks() -> None:
    truth = _square((40, 40), 5, 5, 10) | _square((40, 40), 25, 25, 8)
    s = score(truth, truth)
    assert (s.dice, s.iou, s.precision, s.recall, s.f1) == (1.0, 1.0, 1.0, 1.0, 1.0)
    assert s.true_objects == s.predicted_objects == s.matched_objects == 2


def test_half_overlap_pixel_scores() -> None:
    truth = _square((20, 20), 0, 0, 10)  # 100 px
    pred = np.zeros_like(truth)
    pred[0:10, 5:15] = 255  # 100 px, 50 shared
    s = score(truth, pred)
    assert s.dice == pytest.approx(2 * 50 / 200)
    assert s.iou == pytest.approx(50 / 150)
    # IoU 1/3 < 0.5: no object match, one miss and one false mark.
    assert (s.matched_objects, s.precision, s.recall, s.f1) == (0, 0.0, 0.0, 0.0)


def test_object_matching_counts() -> None:
    shape = (60, 60)
    truth = _square(shape, 2, 2, 10) | _square(shape, 2, 30, 10) | _square(shape, 40, 40, 10)
    # First mark found exactly, second shifted by 2 px (IoU 80/120 = 0.67), third missed, one false mark.
    pred = _square(shape, 2, 2, 10) | _square(shape, 2, 32, 10) | _square(shape, 40, 5, 6)
    s = score(truth, pred)
    assert (s.true_objects, s.predicted_objects, s.matched_objects) == (3, 3, 2)
    assert s.precision == pytest.approx(2 / 3) and s.recall == pytest.approx(2 / 3)
    assert s.f1 == pytest.approx(2 / 3)


def test_merged_marks_count_as_errors() -> None:
    truth = np.zeros((20, 40), dtype=np.uint8)
    truth[5:15, 5:15] = 255
    truth[5:15, 17:27] = 255
    pred = np.zeros_like(truth)
    pred[5:15, 5:27] = 255  # one blob over both: IoU 200/220 with the union, but per mark 100/220
    s = score(truth, pred)
    assert (s.true_objects, s.predicted_objects, s.matched_objects) == (2, 1, 0)


def test_empty_cases_and_pooling() -> None:
    empty = np.zeros((10, 10), dtype=np.uint8)
    s = score(empty, empty)
    assert (s.dice, s.iou, s.f1) == (1.0, 1.0, 1.0)
    only_pred = score(empty, _square((10, 10), 1, 1, 3))
    assert (only_pred.dice, only_pred.precision, only_pred.recall) == (0.0, 0.0, 1.0)
    pooled = Scores.combine([s, only_pred, score(_square((10, 10), 1, 1, 3), _square((10, 10), 1, 1, 3))])
    assert pooled.predicted_objects == 2 and pooled.matched_objects == 1 and pooled.true_objects == 1
    assert pooled.dice == pytest.approx(2 * 9 / (9 + 18))


def test_min_object_px_ignores_specks() -> None:
    truth = _square((30, 30), 2, 2, 10)
    pred = truth | _square((30, 30), 25, 25, 2)
    assert score(truth, pred).predicted_objects == 2
    assert score(truth, pred, min_object_px=5).predicted_objects == 1


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shape"):
        score(np.zeros((3, 3)), np.zeros((3, 4)))


def test_wrong_pixels_lost_marks_and_the_images_holding_most_of_them() -> None:
    truth = np.zeros((20, 20), bool)
    truth[2:6, 2:6] = truth[10:14, 10:14] = True
    shifted = np.zeros_like(truth)
    shifted[2:6, 3:7] = True  # one mark moved a pixel (IoU 0.6, still found), the other missed
    one = score(truth, shifted)
    assert one.wrong_px == 4 + 4 + 16 and one.lost_objects == 1
    assert score(truth, truth).wrong_px == 0 and score(truth, truth).lost_objects == 0
    empty = score(np.zeros_like(truth), np.zeros_like(truth))
    items = [score(truth, truth), one, score(truth, np.zeros_like(truth)), empty]
    # Image 2 misses 32 px, image 1 gets 24 wrong; ties (0 and 3) keep their order.
    assert most_wrong(items, 2) == [2, 1] and most_wrong(items, 9) == [2, 1, 0, 3] and most_wrong(items, 0) == []
    pooled = Scores.combine(items)
    assert pooled.wrong_px == sum(s.wrong_px for s in items)
    assert pooled.dice == pytest.approx(1 - pooled.wrong_px / (pooled.truth_px + pooled.predicted_px))


def test_edge_errors_split_the_wrong_pixels_at_the_edge_by_side() -> None:
    truth = np.zeros((20, 20), np.uint8)
    truth[5:15, 5:15] = 1
    tight = np.zeros_like(truth)
    tight[6:14, 6:14] = 1  # one ring too tight: the 36 pixels of the truth's outer ring are missed
    tight[0, 0] = 1  # a false pixel far from any edge
    assert edge_errors(truth, tight) == EdgeErrors(wrong_px=37, near_edge_px=36, missed_px=36, extra_px=0)
    wide = np.zeros_like(truth)
    wide[4:16, 4:16] = 1  # one ring too wide: 44 extra pixels, within 1 px of the edge
    assert edge_errors(truth, wide) == EdgeErrors(wrong_px=44, near_edge_px=44, missed_px=0, extra_px=44)
    two_wide = np.zeros_like(truth)
    two_wide[3:17, 3:17] = 1  # the second ring lies 2 px out: near the edge only with reach 2
    assert edge_errors(truth, two_wide).near_edge_px == 44
    assert edge_errors(truth, two_wide, reach=2).near_edge_px == 96
    assert edge_errors(truth, truth) == EdgeErrors(0, 0, 0, 0)
    assert EdgeErrors.combine([edge_errors(truth, tight), edge_errors(truth, wide)]) == EdgeErrors(81, 80, 36, 44)


def test_object_matching_takes_any_non_zero_value_as_foreground() -> None:
    # A 16-bit id image (id 256 would wrap to 0 as uint8) and a probability map below 1.
    ids = np.zeros((30, 30), np.uint16)
    ids[2:10, 2:10] = 256
    ids[15:25, 15:25] = 3
    binary = (ids > 0).astype(np.uint8)
    assert match_objects(ids, binary) == (2, 2, 2)
    assert match_objects(binary, binary.astype(float) * 0.7) == (2, 2, 2)
    assert match_objects(ids, ids.astype(bool)) == (2, 2, 2)
    lost = lost_marks(ids, binary)
    assert lost.unmatched_true == lost.unmatched_predicted == 0
