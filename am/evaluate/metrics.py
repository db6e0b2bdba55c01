"""Segmentation quality: pixel Dice and IoU, and object-level precision, recall and F1.

Object matching pairs a predicted component with a true one when their IoU is at least 0.5;
above 0.5 such a pairing is necessarily one-to-one, and at exactly 0.5 pairs are taken best
first, so a mark counts once. Merged or split marks therefore count as errors, as they do for
registration. Empty truth and empty prediction agree perfectly (Dice 1, F1 1)::

    m = score(truth_mask, predicted_mask)
    m.dice, m.iou, m.precision, m.recall, m.f1
    total = Scores.combine([m1, m2])     # pixel sums and object counts pooled over images
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np

MATCH_IOU = 0.5


@dataclass(frozen=True)
class Scores:
    """Counts for one image (or pooled over several) and the rates derived from them."""

    intersection: int
    truth_px: int
    predicted_px: int
    true_objects: int
    predicted_objects: int
    matched_objects: int

    @property
    def dice(self) -> float:
        total = self.truth_px + self.predicted_px
        return 1.0 if total == 0 else 2.0 * self.intersection / total

    @property
    def iou(self) -> float:
        union = self.truth_px + self.predicted_px - self.intersection
        return 1.0 if union == 0 else self.intersection / union

    @property
    def precision(self) -> float:
        return 1.0 if self.predicted_objects == 0 else self.matched_objects / self.predicted_objects

    @property
    def recall(self) -> float:
        return 1.0 if self.true_objects == 0 else self.matched_objects / self.true_objects

    @property
    def f1(self) -> float:
        total = self.true_objects + self.predicted_objects
        return 1.0 if total == 0 else 2.0 * self.matched_objects / total

    @property
    def wrong_px(self) -> int:
        """Pixels missed plus pixels falsely marked: what keeps Dice below 1, pooled or not."""
        return self.truth_px + self.predicted_px - 2 * self.intersection

    @property
    def lost_objects(self) -> int:
        """Marks missed plus false marks: what keeps object F1 below 1."""
        return self.true_objects + self.predicted_objects - 2 * self.matched_objects

    def as_dict(self) -> dict[str, float]:
        out: dict[str, float] = dict(asdict(self))
        out.update(dice=self.dice, iou=self.iou, precision=self.precision, recall=self.recall, f1=self.f1)
        return out

    @staticmethod
    def combine(items: list[Scores]) -> Scores:
        """Pool counts over images: the overall figure weighs every pixel and every mark equally."""
        return Scores(*(sum(getattr(s, name) for s in items) for name in
                        ("intersection", "truth_px", "predicted_px", "true_objects", "predicted_objects",
                         "matched_objects")))


def score(truth: np.ndarray, predicted: np.ndarray, *, min_object_px: int = 0) -> Scores:
    """Compare two masks of equal shape (any non-zero pixel is foreground).

    ``min_object_px`` ignores predicted and true components smaller than this many pixels in
    the object counts (pixel counts are unaffected), for noisy references.
    """
    return score_and_overlaps(truth, predicted, min_object_px=min_object_px)[0]


def score_and_overlaps(truth: np.ndarray, predicted: np.ndarray, *,
                       min_object_px: int = 0) -> tuple[Scores, Overlaps]:
    """:func:`score` and the component overlaps behind it, for callers that also account for the
    lost marks (:func:`am.evaluate.lost.account`) without labelling the masks a second time."""
    if truth.shape != predicted.shape:
        raise ValueError(f"truth {truth.shape} and prediction {predicted.shape} differ in shape")
    t = np.ascontiguousarray(truth != 0, dtype=np.uint8)
    p = np.ascontiguousarray(predicted != 0, dtype=np.uint8)
    intersection = int(np.count_nonzero(t & p))
    o = overlaps(t, p, min_object_px=min_object_px)
    scores = Scores(intersection, int(t.sum()), int(p.sum()), int(o.keep_true.sum()), int(o.keep_predicted.sum()),
                    len(o.matched))
    return scores, o


def match_objects(truth: np.ndarray, predicted: np.ndarray, *, min_object_px: int = 0) -> tuple[int, int, int]:
    """(true objects, predicted objects, matched pairs) with 8-connected components and IoU >= 0.5."""
    o = overlaps(truth, predicted, min_object_px=min_object_px)
    return int(o.keep_true.sum()), int(o.keep_predicted.sum()), len(o.matched)


@dataclass(frozen=True)
class Overlaps:
    """Components of a true and a predicted mask and how they overlap: what object matching and the
    account of lost marks (:mod:`am.evaluate.lost`) both read, so they cannot disagree on a match.

    Component 0 is the background; arrays over components are indexed by label.
    """

    true_area: np.ndarray  # int64 (n_true,)
    predicted_area: np.ndarray  # int64 (n_predicted,)
    keep_true: np.ndarray  # bool (n_true,): counted (not background, not under min_object_px)
    keep_predicted: np.ndarray  # bool (n_predicted,)
    pair_true: np.ndarray  # int64 (pairs,): labels of every overlapping (true, predicted) pair
    pair_predicted: np.ndarray  # int64 (pairs,)
    pair_px: np.ndarray  # int64 (pairs,): pixels the pair shares
    matched: dict[int, int]  # true label -> predicted label, IoU >= MATCH_IOU, one-to-one


def overlaps(truth: np.ndarray, predicted: np.ndarray, *, min_object_px: int = 0) -> Overlaps:
    """Label both masks (8-connected) and pair components by IoU >= 0.5, best first.

    Any non-zero value is foreground, as in :func:`score`: a cast to uint8 would turn a label
    image's 256 or a probability's 0.7 into background.
    """
    n_t, lab_t, stats_t, _ = cv2.connectedComponentsWithStats(_foreground(truth), connectivity=8)
    n_p, lab_p, stats_p, _ = cv2.connectedComponentsWithStats(_foreground(predicted), connectivity=8)
    area_t = stats_t[:, cv2.CC_STAT_AREA].astype(np.int64)
    area_p = stats_p[:, cv2.CC_STAT_AREA].astype(np.int64)
    keep_t = np.arange(n_t) > 0
    keep_p = np.arange(n_p) > 0
    if min_object_px > 0:
        keep_t &= area_t >= min_object_px
        keep_p &= area_p >= min_object_px
    both = (lab_t > 0) & (lab_p > 0)
    codes, inter = np.unique(lab_t[both].astype(np.int64) * n_p + lab_p[both], return_counts=True)
    ti, pi = codes // n_p, codes % n_p
    iou = inter / (area_t[ti] + area_p[pi] - inter)
    ok = (iou >= MATCH_IOU) & keep_t[ti] & keep_p[pi]
    # Best first, so a tie at exactly MATCH_IOU goes to the better pair; the candidates are taken
    # out of the arrays once (indexing inside the loop made whole-image masks quadratic).
    order = np.argsort(-iou[ok], kind="stable")
    matched: dict[int, int] = {}
    used_p: set[int] = set()
    for a, b in zip(ti[ok][order].tolist(), pi[ok][order].tolist(), strict=True):
        if a not in matched and b not in used_p:
            matched[a] = b
            used_p.add(b)
    return Overlaps(area_t, area_p, keep_t, keep_p, ti, pi, inter.astype(np.int64), matched)


def _foreground(mask: np.ndarray) -> np.ndarray:
    """``mask`` as uint8 whose non-zero pixels are exactly the mask's non-zero ones (OpenCV labels
    any non-zero uint8 as foreground, so uint8 masks are passed on without a copy)."""
    mask = np.asarray(mask)
    if mask.dtype == np.uint8:
        return np.ascontiguousarray(mask)
    return np.ascontiguousarray(mask != 0).view(np.uint8)


def most_wrong(items: Sequence[Scores], count: int) -> list[int]:
    """Indices of the ``count`` images with the most wrong pixels, most first.

    A pooled Dice weighs every pixel alike, so a few images a model cannot read can hold most of
    what keeps it from a target; these are the ones to look at first.
    """
    order = sorted(range(len(items)), key=lambda i: (-items[i].wrong_px, -items[i].lost_objects, i))
    return order[: max(0, count)]


@dataclass(frozen=True)
class EdgeErrors:
    """Wrong pixels near a true mark's edge, split by side: a model that draws outlines too tight
    misses more than it adds, and no change far from the edges can fix that."""

    wrong_px: int
    near_edge_px: int
    missed_px: int  # near the edge, inside the truth, not predicted
    extra_px: int  # near the edge, outside the truth, predicted

    @staticmethod
    def combine(items: Sequence[EdgeErrors]) -> EdgeErrors:
        return EdgeErrors(*(sum(getattr(e, name) for e in items)
                            for name in ("wrong_px", "near_edge_px", "missed_px", "extra_px")))


def edge_errors(truth: np.ndarray, predicted: np.ndarray, *, reach: int = 1) -> EdgeErrors:
    """Count the wrong pixels within ``reach`` px (a square window) of the boundary of the truth."""
    inside = np.asarray(truth) > 0
    t = inside.astype(np.uint8)
    window = np.ones((2 * reach + 1, 2 * reach + 1), np.uint8)
    wrong = (np.asarray(predicted) > 0) != inside
    near = wrong & (cv2.dilate(t, window) != cv2.erode(t, window))
    return EdgeErrors(wrong_px=int(wrong.sum()), near_edge_px=int(near.sum()),
                      missed_px=int((near & inside).sum()), extra_px=int((near & ~inside).sum()))
