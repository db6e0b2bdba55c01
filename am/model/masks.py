"""From a model's probabilities to the mask it stands for, as its checkpoint says.

Three steps, each named by a field of :class:`~am.model.checkpoint.ModelMeta`:

1. ``threshold``: a pixel is a mark where its probability reaches it;
2. ``seed_threshold`` (None: skipped): marks that touch are cut apart (:mod:`am.model.separate`);
   then components of at least :data:`~am.model.separate.OVERSIZE_FACTOR` times the median mark
   (measured as in step 3) are looked at again at higher levels, and cut where two cores show;
   those still that large are cut into as many marks of the tile's own shape as they hold, where
   their centres lie a lattice's spacing apart (:mod:`am.model.shape_cut`);
3. ``min_mark_px`` (0: skipped): components smaller than this many model pixels that do not
   touch the edge of the array are dropped. The smallest marks at the training scale cover about
   100 px, so such a component is a speck on the tissue (or a sliver left by the cut of step 2),
   never a mark; one that touches the edge may be the visible part of a mark the tile or image
   cuts, and is kept.
   ``min_mark_fraction`` (0: skipped) does the same relative to the marks at hand: the marks of
   one acquisition share a size, so a component under this fraction of the median of the others
   (those away from the edge that pass ``min_mark_px``) is debris or a fragment, whatever the
   pitch. The median needs :data:`MIN_MARKS_FOR_MEDIAN` of them; with fewer the fixed size alone
   decides. A median (not a mean) lets neither a few large false regions nor a few fragments move it.

With ``seed_threshold`` set, a last step joins the pieces of one mark: two components whose centroids
lie closer than ``JOIN_SPACING`` (0.35) of the lattice pitch are one mark's lobes, joined by their hull
(:mod:`am.model.lobes`).

Workers (through :class:`~am.model.predict.Predictor`), ``am.serve``, evaluation and training
validation all call :func:`mask_from_proba`, so the mask that is measured is the one written::

    mask = mask_from_proba(proba, predictor.meta)                   # bool (H, W)
    mask = mask_from_proba(proba, meta, pixel_area=2.04**2)         # probabilities resized back from 2.04x
"""

from __future__ import annotations

import cv2
import numpy as np

from am.model.checkpoint import ModelMeta
from am.model.components import Components, label, on_edge, parts_of
from am.model.lobes import join_lobes
from am.model.separate import MIN_SEED_PX, OVERSIZE_FACTOR, RESEED_LEVELS, separate_touching, split_oversize
from am.model.shape_cut import cut_by_shape

# The speck size new checkpoints get (am.train --min-mark-px), chosen on synthetic images apart from
# the held-out set: larger sizes start to drop the visible parts of real marks.
DEFAULT_MIN_MARK_PX = 40
# The relative speck size new checkpoints get (am.train --min-mark-fraction), chosen on the same
# images: 0.3 keeps their Dice and raises object F1; from 0.35 Dice starts to fall.
DEFAULT_MIN_MARK_FRACTION = 0.3
# Components (away from the edge, past min_mark_px) a median needs before the relative rule applies.
MIN_MARKS_FOR_MEDIAN = 8


def mask_from_proba(
    proba: np.ndarray,
    meta: ModelMeta,
    *,
    postprocess: bool = True,
    pixel_area: float = 1.0,
    min_seed_px: float = MIN_SEED_PX,
) -> np.ndarray:
    """The checkpoint's mask of 2-D ``proba``; ``postprocess`` False stops at the threshold.

    ``pixel_area`` is how many model pixels one pixel of ``proba`` covers (``scale**2`` for
    probabilities resized back after inference at ``scale``), so sizes keep their meaning in marks.
    ``min_seed_px`` (model pixels) is the core size of step 2, which checkpoints do not name; only
    the level sweep (``benchmarks/postprocess_sweep.py``) sets another.
    """
    known: Components | None = None  # the current mask's labelling, passed on while a step leaves it as it is
    if not postprocess or meta.seed_threshold is None:
        mask = proba >= meta.threshold
    else:
        mask = separate_touching(proba, threshold=meta.threshold, seed_threshold=meta.seed_threshold,
                                 min_seed_px=min_seed_px / pixel_area)
        levels = tuple(level for level in RESEED_LEVELS if level > meta.seed_threshold)
        if levels:
            mask, known = _second_look(mask, proba, levels, _least_mark_px(meta, pixel_area))
    if postprocess and (meta.min_mark_px > 0 or meta.min_mark_fraction > 0):
        known = label(mask, known=known)
        mask = drop_specks(mask, meta.min_mark_px / pixel_area, fraction=meta.min_mark_fraction,
                           components=known.parts)
    if postprocess and meta.seed_threshold is not None:
        known = label(mask, known=known)
        median = _median_of(known, _least_mark_px(meta, pixel_area))
        if median is not None:
            mask = join_lobes(mask, median=median, components=known.parts)
    return mask


def drop_specks(mask: np.ndarray, min_px: float, *, fraction: float = 0.0,
                components: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """``mask`` (bool) without the components that do not touch its edge and are under ``min_px``
    pixels, or under ``fraction`` of the median area of the others (see the module's step 3);
    ``mask`` itself where none is. ``components`` are ``mask``'s labels, stats and centroids where
    the caller has them (:func:`am.model.components.label`)."""
    labels, stats, _ = parts_of(mask, components)
    if len(stats) <= 1:
        return mask
    area, edge = _areas(stats, mask.shape)
    limit = float(min_px)
    median = _median_of_marks(area, edge, min_px) if fraction > 0 else None
    if median is not None:
        limit = max(limit, fraction * median)
    keep = (area >= limit) | edge
    keep[0] = False
    if keep[1:].all():
        return mask
    return keep[labels]


def median_mark(mask: np.ndarray, min_px: float) -> float | None:
    """The median area of the components of ``mask`` away from its edge with at least ``min_px``
    pixels: the size of one mark here, or None with fewer than :data:`MIN_MARKS_FOR_MEDIAN` of them."""
    return _median_of(label(mask), min_px)


def _least_mark_px(meta: ModelMeta, pixel_area: float) -> float:
    """The smallest component (pixels of the probabilities) that counts towards the median mark."""
    return max(meta.min_mark_px, 1) / pixel_area


def _second_look(mask: np.ndarray, proba: np.ndarray, levels: tuple[float, ...],
                 min_px: float) -> tuple[np.ndarray, Components]:
    """Step 2's second look inside oversized components: at higher ``levels``, then by the marks' shape.
    Returns the mask with the labelling of the last step's input (the mask's own, where it cut nothing)."""
    known = label(mask)
    median = _median_of(known, min_px)
    if median is None:
        return mask, known
    mask = split_oversize(mask, proba, median=median, levels=levels, components=(known.labels, known.stats))
    known = label(mask, known=known)
    return cut_by_shape(mask, proba, median=median, factor=OVERSIZE_FACTOR, components=known.parts), known


def _median_of(components: Components, min_px: float) -> float | None:
    """:func:`median_mark` of the mask ``components`` were read from."""
    return _median_of_marks(*_areas(components.stats, components.mask.shape), min_px)


def _areas(stats: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Each component's area and whether it touches the edge (row 0 is the background)."""
    return stats[:, cv2.CC_STAT_AREA], on_edge(stats, shape)


def _median_of_marks(area: np.ndarray, edge: np.ndarray, min_px: float) -> float | None:
    inner = area[1:][~edge[1:] & (area[1:] >= min_px)]
    return float(np.median(inner)) if inner.size >= MIN_MARKS_FOR_MEDIAN else None


__all__ = [
    "DEFAULT_MIN_MARK_FRACTION",
    "DEFAULT_MIN_MARK_PX",
    "MIN_MARKS_FOR_MEDIAN",
    "drop_specks",
    "mask_from_proba",
    "median_mark",
]
