"""Touching marks cut apart where the model is least sure they are one.

Thresholded at one level, the U-Net's probabilities join two marks whose blurred edges meet: the
few pixels between them pass the threshold, and the mask shows one component where the
acquisition has two marks (counted as two misses and one false mark, and one spectrum mapped to
the pixels of two). Their cores stay apart at a higher probability. Every core of at least
``min_seed_px`` pixels above ``seed_threshold`` seeds a watershed of the inverted probability
inside the thresholded mask, and a line of background about one pixel wide is drawn where the
floods of two seeds meet, along the valley between them (:func:`flood_apart`). Components with
one seed or none are left exactly as thresholded, so a lone mark never loses a pixel, and only
crowded components cost any work::

    mask = separate_touching(proba, threshold=0.5, seed_threshold=0.9)    # bool (H, W)

The checkpoint holds ``seed_threshold`` beside ``threshold`` (None: no separation), and
:func:`am.model.masks.mask_from_proba` applies it, so every consumer of a model cuts marks the
same way.

One level cannot serve every pair: where two marks press together (stacked crescents of two rows
closer than the others, as at the start of a real acquisition), the model stays above the seed
level across the contact and the pair keeps one core. :func:`split_oversize` looks again, at
higher levels, inside only the components far larger than the median mark of the same tile, and
cuts those that show two cores of a mark-like size there::

    mask = split_oversize(mask, proba, median=float(np.median(areas)))
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage.segmentation import watershed

from am.errors import InputError

# Cores smaller than this many model pixels are mostly bumps on the plateau of one mark (the arms
# of a crescent, the lobes of a split crater), not marks of their own. Chosen with the seed level on
# synthetic images apart from the held-out set (25-300 px tried): smaller cores split more single
# marks than they free touching ones, larger ones leave more touching marks joined.
MIN_SEED_PX = 100
# The seed level new checkpoints get (am.train --seed-threshold), chosen on synthetic images apart
# from the held-out set: lower levels leave more touching marks joined, higher ones split more lobed marks.
DEFAULT_SEED_THRESHOLD = 0.9
# Components of at least this many times the median mark are looked at again (split_oversize):
# two marks that press together make about twice a mark, and a mark's own size varies far less
# within one acquisition. 1.5 cut more single marks in two on synthetic images apart from the
# held-out set, 2.0 left most of the pairs of the real tile_a joined.
OVERSIZE_FACTOR = 1.7
# The higher levels tried there, lowest first; 0.99 split the "C" marks of the real crop3.
RESEED_LEVELS = (0.95, 0.98)
# A core must hold this fraction of the median mark to stand for a mark of its own there.
RESEED_CORE_FRACTION = 0.25


def separate_touching(
    proba: np.ndarray,
    *,
    threshold: float,
    seed_threshold: float,
    min_seed_px: float = MIN_SEED_PX,
) -> np.ndarray:
    """``proba >= threshold`` (bool, same shape) with touching marks split by one-pixel lines."""
    if proba.ndim != 2:
        raise InputError(f"expected 2-D probabilities, got shape {proba.shape}")
    if not 0.0 < threshold < seed_threshold < 1.0:
        raise InputError(f"seed_threshold {seed_threshold} must lie between threshold {threshold} and 1")
    region = proba >= threshold
    seeds, n_seeds = _seeds(proba >= seed_threshold, min_seed_px)
    if n_seeds < 2:
        return region
    n_regions, regions = cv2.connectedComponents(region.view(np.uint8), connectivity=8)
    seeded = seeds > 0
    # Seeds lie inside the region (seed_threshold > threshold), so each belongs to one component.
    pairs = np.unique(regions[seeded].astype(np.int64) * (n_seeds + 1) + seeds[seeded])
    seeds_per_region = np.bincount(pairs // (n_seeds + 1), minlength=n_regions)
    crowded_ids = np.flatnonzero(seeds_per_region >= 2)
    if crowded_ids.size == 0:
        return region
    crowded = np.isin(regions, crowded_ids)
    rows, cols = np.nonzero(crowded)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    inside = crowded[box]
    out = region.copy()
    out[box] &= ~inside | flood_apart(proba[box], np.where(inside, seeds[box], 0), inside)
    return out


def split_oversize(
    mask: np.ndarray,
    proba: np.ndarray,
    *,
    median: float,
    factor: float = OVERSIZE_FACTOR,
    levels: tuple[float, ...] = RESEED_LEVELS,
    core_fraction: float = RESEED_CORE_FRACTION,
    components: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """``mask`` with each component of at least ``factor * median`` pixels cut where, at the lowest
    of ``levels`` that shows two or more cores of ``core_fraction * median`` pixels inside it, their
    watershed floods meet. Other components are left exactly as they are; nothing is added.

    ``components`` is ``(labels, stats)`` of ``mask`` from ``cv2.connectedComponentsWithStats``
    (8-connected) where the caller has them already: labelling a tile costs as much as the rest."""
    if mask.shape != proba.shape:
        raise InputError(f"mask {mask.shape} and probabilities {proba.shape} differ in shape")
    if components is None:
        _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    else:
        labels, stats = components
    large = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] >= factor * median)
    out = mask
    for index in large[large > 0]:
        x, y, w, h = (int(v) for v in stats[index, :4])
        box = (slice(y, y + h), slice(x, x + w))
        inside = labels[box] == index
        cut = _cut_at_higher_levels(inside, proba[box], levels, core_fraction * median)
        if cut is not None:
            out = out.copy() if out is mask else out
            out[box] &= ~inside | cut
    return out


def _cut_at_higher_levels(inside: np.ndarray, proba: np.ndarray, levels: tuple[float, ...],
                          min_core_px: float) -> np.ndarray | None:
    """The pixels of ``inside`` the cut keeps (bool), or None where no level shows two cores."""
    for level in levels:
        seeds, n_seeds = _seeds((proba >= level) & inside, min_core_px)
        if n_seeds >= 2:
            return flood_apart(proba, seeds, inside)
    return None


def flood_apart(proba: np.ndarray, seeds: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """The pixels of ``inside`` kept (bool) once the watershed floods of ``seeds`` over ``-proba`` are
    parted by a line of background wherever two of them meet, so no two floods stay 8-connected.

    Of each 8-adjacent pair of pixels in different floods the less probable one goes (both on a
    tie): the line runs along the valley between two marks, as a watershed line does. It is drawn
    here rather than by ``watershed(..., watershed_line=True)``, whose flooding took 2.4-3 s on one
    146 x 112 px component of a half-trained model and 558 s on the same box without a mask,
    against 2 ms without the line: one such tile stalls a worker or a validation pass.
    """
    labels = watershed(-proba.astype(np.float32, copy=False), seeds, mask=inside, connectivity=2)
    return part_regions(labels, proba)


def part_regions(regions: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """The pixels of ``regions > 0`` kept (bool) once a line of background parts every two regions
    that touch, so no two stay 8-connected. Of each 8-adjacent pair of pixels in different regions
    the less probable one goes (both on a tie): the line runs along the valley between two marks."""
    p = proba.astype(np.float32, copy=False)
    keep = regions > 0
    height, width = regions.shape
    # Each pair is seen once: right, down, down-right and down-left of every pixel.
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = (slice(0, height - dy), slice(max(0, -dx), width - max(0, dx)))
        b = (slice(dy, height), slice(max(0, dx), width - max(0, -dx)))
        la, lb = regions[a], regions[b]
        meet = (la != lb) & (la > 0) & (lb > 0)
        if not meet.any():
            continue
        pa, pb = p[a], p[b]
        keep[a] &= ~(meet & (pa <= pb))
        keep[b] &= ~(meet & (pb <= pa))
    return keep


def _seeds(cores: np.ndarray, min_seed_px: float) -> tuple[np.ndarray, int]:
    """Labelled cores of at least ``min_seed_px`` pixels (int32, 0 elsewhere) and how many there are."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(cores.view(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_seed_px
    keep[0] = False
    new_ids = np.zeros(n, dtype=np.int32)
    new_ids[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return new_ids[labels], int(keep.sum())


__all__ = [
    "DEFAULT_SEED_THRESHOLD",
    "MIN_SEED_PX",
    "OVERSIZE_FACTOR",
    "RESEED_CORE_FRACTION",
    "RESEED_LEVELS",
    "flood_apart",
    "part_regions",
    "separate_touching",
    "split_oversize",
]
