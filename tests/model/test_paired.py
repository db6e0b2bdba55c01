"""A paired bootstrap over images tells a change in a pooled figure from the luck of which images were drawn."""

from __future__ import annotations

import pytest

from am.evaluate.metrics import Scores
from am.evaluate.paired import paired_difference, per_image_counts


def image(matched: int, *, true: int = 100, predicted: int = 100, intersection: int = 800) -> list[int]:
    """One image's counts: 1000 true and predicted pixels, ``true`` marks of which ``matched`` are found."""
    return per_image_counts([Scores(intersection, 1000, 1000, true, predicted, matched)])[0]


def test_the_same_counts_differ_by_nothing_and_their_interval_is_zero() -> None:
    counts = [image(80 + i) for i in range(10)]
    d = paired_difference(counts, counts, figure="f1")
    assert (d.change, d.low, d.high, d.sign) == (0.0, 0.0, 0.0, 0)


def test_a_gain_on_every_image_is_a_gain_and_the_change_is_the_pooled_difference() -> None:
    base = [image(70 + i) for i in range(40)]
    other = [image(75 + i) for i in range(40)]
    d = paired_difference(base, other, figure="f1")
    pooled = [Scores(*map(sum, zip(*rows, strict=True))).f1 for rows in (base, other)]
    assert d.change == pytest.approx(pooled[1] - pooled[0]) == pytest.approx(0.05)
    assert 0 < d.low <= d.change <= d.high and d.sign == 1
    assert paired_difference(other, base, figure="f1").sign == -1


def test_a_gain_held_by_one_image_of_forty_is_not_called_a_gain() -> None:
    """Without that one image (left out of about a third of the draws) nothing changes, so the
    interval reaches zero although the pooled figure rose by 0.005."""
    base = [image(80) for _ in range(40)]
    other = [image(80) for _ in range(39)] + [image(100)]
    d = paired_difference(base, other, figure="f1")
    assert d.change == pytest.approx(0.005) and d.low == 0 < d.high and d.sign == 0


def test_dice_is_recomputed_from_pixels_and_the_draws_are_seeded() -> None:
    base = [image(80, intersection=700 + 10 * i) for i in range(20)]
    other = [image(80, intersection=720 + 10 * i) for i in range(20)]
    first = paired_difference(base, other, figure="dice", seed=3)
    assert first == paired_difference(base, other, figure="dice", seed=3)
    assert first.change == pytest.approx(0.02) and first.sign == 1 and first.level == 0.95
    assert paired_difference(base, other, figure="f1").change == 0


@pytest.mark.parametrize(("base", "other", "figure", "message"), [
    ([image(80)], [image(80), image(81)], "f1", "equal lists"),
    ([[1, 2, 3]], [[1, 2, 3]], "f1", "rows of 6 counts"),
    ([], [], "dice", "equal lists"),
    ([image(80)], [image(80)], "iou", "'iou' is not one of dice, f1"),
])
def test_counts_that_cannot_be_paired_are_refused(base, other, figure, message) -> None:
    with pytest.raises(ValueError, match=message):
        paired_difference(base, other, figure=figure)
