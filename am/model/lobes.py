"""Pieces of one mark joined again: the lobes of a real crater that the model outlines apart.

The real crop2 shows marks of two light lobes with a dark crater between them, one mark per node
of its lattice; the model outlines the lobes and leaves the crater out, so one mark comes out as two
components, and its spectrum's pixels are half found. Two marks of a lattice lie about a pitch apart
(at least 0.45 of it even where two rows press together, as in the real tile_a and crop3), while the
lobes of one mark lie 0.22-0.35 of it apart. So two components whose centroids are closer than
``JOIN_SPACING`` of the pitch (read from the mask's autocorrelation, :func:`am.pitch.estimate_pitch`)
are one mark's pieces, and are joined by the convex hull of the two, as the reference and the
synthetic truth label such a mark, gap included. Pieces too large to be part of a mark stay apart,
and the hull never reaches within a pixel of a third component::

    mask = join_lobes(mask, median=median_mark(mask, 40))
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.spatial import cKDTree

from am.errors import InputError
from am.model.components import on_edge, parts_of
from am.pitch import estimate_pitch

# Centroids closer than this share of the lattice pitch belong to one mark. Chosen on the real crop2
# (its lobes measured 0.25-0.35 apart) against the closest marks of different nodes on the real
# samples (0.45 and more) and checked on synthetic images apart from the held-out set.
JOIN_SPACING = 0.35
# A piece is at most this many median marks, and two joined pieces at most MAX_JOINED.
MAX_PIECE = 1.3
MAX_JOINED = 2.6


def join_lobes(
    mask: np.ndarray,
    *,
    median: float,
    spacing: float = JOIN_SPACING,
    components: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """``mask`` with each pair of components whose centroids lie closer than ``spacing`` lattice
    pitches joined by their convex hull (closest pairs first, each component in one pair at most).
    Components touching the edge, and tiles without a lattice, are left as they are.

    ``components`` are ``mask``'s 8-connected labels, stats and centroids where the caller has them
    (:func:`am.model.components.label`), so the tile is not labelled twice."""
    if mask.ndim != 2:
        raise InputError(f"expected a 2-D mask, got shape {mask.shape}")
    labels, stats, centroids = parts_of(mask, components)
    pieces = _pieces(stats, mask.shape, median)
    if pieces.size < 2:
        return mask
    pitch = estimate_pitch(mask.view(np.uint8) * np.uint8(255))
    if pitch is None:
        return mask
    pairs = cKDTree(centroids[pieces]).query_pairs(spacing * pitch, output_type="ndarray")
    if pairs.size == 0:
        return mask
    first, second = pieces[pairs[:, 0]], pieces[pairs[:, 1]]
    gaps = np.hypot(*(centroids[first] - centroids[second]).T)
    area = stats[:, cv2.CC_STAT_AREA]
    out = mask.copy()
    joined: set[int] = set()
    for index in np.argsort(gaps, kind="stable"):
        a, b = int(first[index]), int(second[index])
        if a in joined or b in joined or area[a] + area[b] > MAX_JOINED * median:
            continue
        joined.update((a, b))
        _fill_hull(out, labels, stats, a, b)
    return out


def _pieces(stats: np.ndarray, shape: tuple[int, ...], median: float) -> np.ndarray:
    """Components away from the edge no larger than MAX_PIECE medians."""
    keep = ~on_edge(stats, shape) & (stats[:, cv2.CC_STAT_AREA] <= MAX_PIECE * median)
    keep[0] = False
    return np.flatnonzero(keep)


def _fill_hull(out: np.ndarray, labels: np.ndarray, stats: np.ndarray, a: int, b: int) -> None:
    """Set the convex hull of components ``a`` and ``b`` in ``out``, except within a pixel of any
    other component, so the joined mark never touches a neighbour."""
    x0 = int(min(stats[a, 0], stats[b, 0]))
    y0 = int(min(stats[a, 1], stats[b, 1]))
    x1 = int(max(stats[a, 0] + stats[a, 2], stats[b, 0] + stats[b, 2]))
    y1 = int(max(stats[a, 1] + stats[a, 3], stats[b, 1] + stats[b, 3]))
    # One pixel of margin on each side, to see neighbours beside the box.
    top, left = max(y0 - 1, 0), max(x0 - 1, 0)
    box = (slice(top, min(y1 + 1, labels.shape[0])), slice(left, min(x1 + 1, labels.shape[1])))
    local = labels[box]
    both = ((local == a) | (local == b)).astype(np.uint8)
    hull = np.zeros_like(both)
    cv2.fillConvexPoly(hull, cv2.convexHull(cv2.findNonZero(both)), 1)
    others = ((local > 0) & (both == 0)).astype(np.uint8)
    near_others = cv2.dilate(others, np.ones((3, 3), np.uint8)) > 0
    out[box] |= (hull > 0) & ~near_others


__all__ = ["JOIN_SPACING", "join_lobes"]
