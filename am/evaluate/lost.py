"""Why marks are lost: an account of what keeps object F1 below 1.

Object F1 counts a mark found only when one predicted component matches it at IoU >= 0.5, so a
mark can be lost in ways that call for different fixes: not seen at all (the model cannot read
that look), joined with a neighbour (the gap between marks), cut in two, outlined too tight or
too wide (a boundary error that matters most on small or thin marks), or outlined at about the
right size but off the mark (shifted, or the wrong shape: a placement error, not a size one).
False marks are either components on empty tissue or misshapen ones left over from a merge, a
split or a poor outline::

    lost = LostMarks.combine([lost_marks(truth, predicted) for truth, predicted in pairs])
    lost.missed, lost.merged, lost.split, lost.too_small, lost.too_large, lost.misplaced
    lost.false_marks, lost.misshapen
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

from am.evaluate.metrics import Overlaps, overlaps

# A predicted component takes part in a true mark's fate when it covers this share of the mark.
COVER = 0.2
# An outline within this factor of the mark's area (either way) is about the right size: a low
# IoU then comes from where it lies or its shape, not from its size.
SIZE_TOLERANCE = 1.2


@dataclass(frozen=True)
class LostMarks:
    """Unmatched true marks by what happened to them, and unmatched predicted components by kind.

    The first six add up to the true marks left unmatched, the last two to the predicted
    components left unmatched, so together they are :attr:`Scores.lost_objects`.
    """

    missed: int  # predicted pixels cover under COVER of the mark
    merged: int  # a component covering it covers another true mark too
    split: int  # in pieces: two or more components cover COVER of it each, or none does alone
    too_small: int  # one component, smaller than the mark by more than SIZE_TOLERANCE, IoU < 0.5
    too_large: int  # one component, larger than the mark by more than SIZE_TOLERANCE, IoU < 0.5
    misplaced: int  # one component of about the mark's size, IoU < 0.5: shifted or misshapen
    false_marks: int  # predicted components touching no true mark
    misshapen: int  # unmatched predicted components touching a true mark: merged, split or badly outlined

    @property
    def unmatched_true(self) -> int:
        return self.missed + self.merged + self.split + self.too_small + self.too_large + self.misplaced

    @property
    def unmatched_predicted(self) -> int:
        return self.false_marks + self.misshapen

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def summary(self) -> str:
        """One line for reports, the order of the fields."""
        return (f"marks lost: {self.missed} missed, {self.merged} merged with a neighbour, {self.split} split, "
                f"{self.too_small} outlined too small, {self.too_large} too large, {self.misplaced} misplaced "
                f"(about the right size, off the mark); false marks: "
                f"{self.false_marks} on empty tissue, {self.misshapen} misshapen (touching a mark)")

    @staticmethod
    def combine(items: Sequence[LostMarks]) -> LostMarks:
        return LostMarks(*(sum(getattr(x, f.name) for x in items) for f in fields(LostMarks)))


def lost_marks(truth: np.ndarray, predicted: np.ndarray, *, min_object_px: int = 0) -> LostMarks:
    """Sort every mark and component that object matching (IoU >= 0.5) left unpaired.

    ``min_object_px`` leaves smaller components out of the account as
    :func:`am.evaluate.metrics.score` leaves them out of the object counts (their pixels still
    cover marks).
    """
    return account(overlaps(truth, predicted, min_object_px=min_object_px))


def account(o: Overlaps) -> LostMarks:
    """The account of :func:`lost_marks` from overlaps already computed (for instance by
    :func:`am.evaluate.metrics.score_and_overlaps`)."""
    # Which true marks each predicted component covers substantially, and the reverse.
    covers = (o.pair_px >= COVER * o.true_area[o.pair_true]) & o.keep_true[o.pair_true]
    marks_under = np.bincount(o.pair_predicted[covers], minlength=len(o.predicted_area))
    # Each mark's pairs as one slice of the pairs sorted by mark, so whole-image masks with tens of
    # thousands of marks take one pass rather than a scan of every pair per mark.
    order = np.argsort(o.pair_true, kind="stable")
    starts = np.searchsorted(o.pair_true[order], np.arange(len(o.true_area) + 1))
    counts = dict.fromkeys(("missed", "merged", "split", "too_small", "too_large", "misplaced"), 0)
    for mark in np.flatnonzero(o.keep_true):
        if mark in o.matched:
            continue
        mine = order[starts[mark]:starts[mark + 1]]
        covered = int(o.pair_px[mine].sum())
        substantial = o.pair_predicted[mine[covers[mine]]]
        if covered < COVER * o.true_area[mark]:
            counts["missed"] += 1
        elif np.any(marks_under[substantial] >= 2):
            counts["merged"] += 1
        elif len(substantial) != 1:  # in two or more pieces, or in many that each cover little
            counts["split"] += 1
        else:
            largest = o.pair_predicted[mine[np.argmax(o.pair_px[mine])]]
            counts[_size_error(int(o.predicted_area[largest]), int(o.true_area[mark]))] += 1
    # Only a mark the account keeps makes a component misshapen: one lying on nothing but a speck under
    # min_object_px stands on empty tissue as far as the counts go, so it is a false mark.
    touching = np.zeros(len(o.predicted_area), bool)
    touching[o.pair_predicted[o.keep_true[o.pair_true]]] = True
    unmatched = o.keep_predicted.copy()
    unmatched[list(o.matched.values())] = False
    return LostMarks(**counts, false_marks=int((unmatched & ~touching).sum()),
                     misshapen=int((unmatched & touching).sum()))


def _size_error(predicted_area: int, true_area: int) -> str:
    """Which category a single outline with IoU < 0.5 falls in, by its size against the mark's."""
    if predicted_area * SIZE_TOLERANCE < true_area:
        return "too_small"
    if predicted_area > SIZE_TOLERANCE * true_area:
        return "too_large"
    return "misplaced"
