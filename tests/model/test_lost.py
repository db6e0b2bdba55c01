"""The account of lost marks on hand-made masks whose answers are known."""

from __future__ import annotations

import numpy as np

from am.evaluate.lost import LostMarks, lost_marks
from am.evaluate.metrics import score

SHAPE = (60, 60)


def _box(y: int, x: int, h: int, w: int) -> np.ndarray:
    m = np.zeros(SHAPE, np.uint8)
    m[y : y + h, x : x + w] = 1
    return m


def test_a_perfect_prediction_loses_nothing() -> None:
    truth = _box(5, 5, 10, 10) | _box(30, 30, 10, 10)
    assert lost_marks(truth, truth) == LostMarks(0, 0, 0, 0, 0, 0, 0, 0)


def test_each_way_of_losing_a_mark_is_told_apart() -> None:
    cases = {
        "missed": (_box(5, 5, 10, 10), np.zeros(SHAPE, np.uint8)),
        # two marks 2 px apart, drawn as one component with the gap filled
        "merged": (_box(5, 5, 10, 10) | _box(5, 17, 10, 10), _box(5, 5, 10, 22)),
        # one mark drawn as two halves with a 2 px gap
        "split": (_box(5, 5, 10, 10), _box(5, 5, 10, 4) | _box(5, 11, 10, 4)),
        # 5x5 of a 10x10 mark: IoU 0.25, a quarter of the mark covered
        "too_small": (_box(5, 5, 10, 10), _box(5, 5, 5, 5)),
        # a 6x6 mark inside a 12x12 component: IoU 0.25
        "too_large": (_box(8, 8, 6, 6), _box(5, 5, 12, 12)),
        # the mark's own size, 7 px to the side: IoU 30/170
        "misplaced": (_box(5, 5, 10, 10), _box(5, 12, 10, 10)),
    }
    for kind, (truth, predicted) in cases.items():
        lost = lost_marks(truth, predicted)
        marks = 2 if kind == "merged" else 1
        assert getattr(lost, kind) == marks, (kind, lost)
        assert lost.unmatched_true == marks, (kind, lost)
        assert lost.false_marks == 0, (kind, lost)
        assert lost.misshapen == (0 if kind == "missed" else 2 if kind == "split" else 1), (kind, lost)


def test_a_mark_in_many_small_pieces_counts_as_split() -> None:
    # four 2x10 strips of a 10x20 mark: each covers 10 %, together 40 %
    pieces = _box(5, 5, 10, 2) | _box(5, 9, 10, 2) | _box(5, 13, 10, 2) | _box(5, 17, 10, 2)
    lost = lost_marks(_box(5, 5, 10, 20), pieces)
    assert (lost.split, lost.unmatched_true, lost.misshapen) == (1, 1, 4)


def test_a_component_on_empty_tissue_is_a_false_mark() -> None:
    truth = _box(5, 5, 10, 10)
    lost = lost_marks(truth, truth | _box(40, 40, 6, 6))
    assert (lost.false_marks, lost.misshapen, lost.unmatched_true) == (1, 0, 0)


def test_a_component_on_nothing_but_an_ignored_speck_is_a_false_mark() -> None:
    # With min_object_px the 1 px speck is no mark, so the 5x5 block over it stands on empty tissue as far
    # as the counts go, not beside a mark.
    truth = _box(5, 5, 10, 10) | _box(40, 40, 1, 1)
    lost = lost_marks(truth, _box(5, 5, 10, 10) | _box(38, 38, 5, 5), min_object_px=5)
    assert (lost.false_marks, lost.misshapen, lost.unmatched_true) == (1, 0, 0)


def test_a_barely_touched_mark_counts_as_missed() -> None:
    # 3x3 of a 10x10 mark (9 %) is below the 20 % a component must cover to take part.
    lost = lost_marks(_box(5, 5, 10, 10), _box(5, 5, 3, 3))
    assert (lost.missed, lost.misshapen) == (1, 1)


def test_the_account_adds_up_to_the_objects_f1_loses() -> None:
    rng = np.random.default_rng(5)
    for _ in range(20):
        truth = np.zeros(SHAPE, np.uint8)
        predicted = np.zeros(SHAPE, np.uint8)
        for _ in range(8):
            y, x = (int(v) for v in rng.integers(0, 50, 2))
            h, w = (int(v) for v in rng.integers(3, 10, 2))
            truth[y : y + h, x : x + w] = 1
            dy, dx = (int(v) for v in rng.integers(-3, 4, 2))
            predicted[max(0, y + dy) : y + dy + h + int(rng.integers(-2, 3)), max(0, x + dx) : x + dx + w] = 1
        for min_px in (0, 30):
            lost = lost_marks(truth, predicted, min_object_px=min_px)
            assert lost.unmatched_true + lost.unmatched_predicted == score(
                truth, predicted, min_object_px=min_px).lost_objects


def test_accounts_pool_over_images() -> None:
    one = lost_marks(_box(5, 5, 10, 10), np.zeros(SHAPE, np.uint8))
    two = lost_marks(_box(5, 5, 10, 10), _box(40, 40, 5, 5) | _box(5, 5, 10, 10))
    assert LostMarks.combine([one, two]) == LostMarks(1, 0, 0, 0, 0, 0, 1, 0)
    assert LostMarks.combine([one, two]).as_dict()["missed"] == 1


def test_an_outline_within_a_fifth_of_the_marks_size_is_misplaced_not_too_large_or_small() -> None:
    mark = _box(5, 5, 10, 10)  # 100 px
    shifted_larger = _box(5, 11, 10, 11)  # 110 px, IoU 40/170
    shifted_smaller = _box(5, 11, 10, 9)  # 90 px
    wider = _box(5, 11, 10, 13)  # 130 px
    assert lost_marks(mark, shifted_larger).misplaced == 1
    assert lost_marks(mark, shifted_smaller).misplaced == 1
    assert lost_marks(mark, wider).too_large == 1
    assert "1 misplaced" in lost_marks(mark, shifted_larger).summary()
