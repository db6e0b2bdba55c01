"""Whether two models' pooled figures on the same images differ, or only by which images were drawn.

The held-out set is 40 images, and a few of them hold most of the lost marks (one image of rimmed
"C" marks the shipped model cannot read holds 304 of them). Two checkpoints can then differ by a
hundredth of object F1 through two or three images, and the sign can turn on another 40 images
of the same kind: a fine-tune measured at +0.016 F1 on the tuning set and -0.006 on the held-out
set. So a change is judged against the spread of a paired bootstrap over images: the same images,
drawn again with replacement, are pooled for both models, and the middle ``level`` of the
differences is the interval. Where it excludes zero the change holds beyond the luck of the draw::

    base = per_image_counts(shipped_scores)          # one row of counts per image
    other = per_image_counts(candidate_scores)
    d = paired_difference(base, other, figure="f1")  # d.change, d.low, d.high, d.sign
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields

import numpy as np

from am.evaluate.metrics import Scores

FIGURES = ("dice", "f1")
RESAMPLES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Difference:
    """``other`` minus ``base`` on the pooled figure, and the bootstrap interval around it."""

    change: float
    low: float
    high: float
    level: float

    @property
    def sign(self) -> int:
        """1 where the whole interval lies above zero, -1 where below, 0 where it holds zero."""
        return 1 if self.low > 0 else -1 if self.high < 0 else 0


def per_image_counts(scores: Sequence[Scores]) -> list[list[int]]:
    """Each image's counts in the order of :class:`Scores`' fields, as JSON keeps them."""
    return [list(astuple(s)) for s in scores]


def paired_difference(
    base: Sequence[Sequence[int]],
    other: Sequence[Sequence[int]],
    *,
    figure: str,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> Difference:
    """The pooled ``figure`` ("dice" or "f1") of ``other`` minus that of ``base``, both per-image
    counts of the same images in the same order, with its paired bootstrap interval (seeded, so a
    comparison reads the same every time it is made)."""
    if figure not in FIGURES:
        raise ValueError(f"figure {figure!r} is not one of {', '.join(FIGURES)}")
    a, b = np.asarray(base, dtype=np.int64), np.asarray(other, dtype=np.int64)
    width = len(fields(Scores))
    if a.ndim != 2 or a.shape[1] != width or a.shape != b.shape or len(a) == 0:
        raise ValueError(f"per-image counts must be two equal lists of rows of {width} counts, "
                         f"got shapes {a.shape} and {b.shape}")
    if not 0 < level < 1 or resamples < 1:
        raise ValueError(f"level {level} must lie between 0 and 1 and resamples {resamples} be positive")
    draws = np.random.default_rng(seed).integers(0, len(a), size=(resamples, len(a)))
    changes = np.array([_pooled(b[i], figure) - _pooled(a[i], figure) for i in draws])
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(changes, [tail, 100 - tail])
    return Difference(_pooled(b, figure) - _pooled(a, figure), float(low), float(high), level)


def _pooled(counts: np.ndarray, figure: str) -> float:
    return float(getattr(Scores(*(int(v) for v in counts.sum(axis=0))), figure))


__all__ = ["FIGURES", "LEVEL", "RESAMPLES", "Difference", "paired_difference", "per_image_counts"]
