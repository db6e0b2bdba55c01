"""Marks still joined after step 2 cut apart by the shape of the tile's own lone marks.

Where the model stays sure across the contact of two marks (their blurred edges meet, or a crescent's
tail presses on the next mark), no probability level shows two cores and
:func:`am.model.separate.split_oversize` leaves the pair as one component: one false mark and two
missed for object F1, and one spectrum mapped to the pixels of two. Yet every mark of one acquisition
has the same shape, and the tile's lone marks show it. Their masks, overlaid at their centroids, make
a template; inside a component of at least ``factor`` times the median mark, as many templates as
medians it holds are placed greedily where each covers the most of what the earlier ones left, and
each pixel goes to the template that covers it most. The cut is drawn as step 2 draws its own (a line
of background along the less probable side of each contact)::

    mask = cut_by_shape(mask, proba, median=median_mark(mask, 40), factor=OVERSIZE_FACTOR)

Two guards keep single marks whole. A placed template must find ``MIN_EXPLAINED`` of its own area
still uncovered inside the component, so a mark merely larger than the median (a lobed crater, a
long crescent) takes one template and not two. And the templates' centres must lie at least
``MIN_SPACING`` of the lattice pitch apart (read from the mask's autocorrelation,
:func:`am.pitch.estimate_pitch`; a tile without a lattice is left alone): two marks of a lattice are
about a pitch apart, while the lobes of one real mark lie a quarter to a half of it apart.
"""

from __future__ import annotations

import cv2
import numpy as np

from am.errors import InputError
from am.model.components import on_edge, parts_of
from am.model.separate import part_regions
from am.pitch import estimate_pitch

# Lone marks are the components (away from the tile's edge) of this range of the median's size:
# near-median ones are whole marks, neither pairs nor fragments.
REFERENCE_RANGE = (0.75, 1.33)
# Fewer lone marks than this make no reliable shape.
MIN_REFERENCES = 5
# A template pixel is one at least this share of the lone marks cover, once overlaid at their centroids.
TEMPLATE_SHARE = 0.5
# A placed template must cover this share of its pixels with component pixels no earlier template
# covers. Chosen on synthetic images apart from the held-out set (0.5-0.9 tried: lower cuts more
# single marks in two, higher leaves more pairs joined).
MIN_EXPLAINED = 0.6
# Templates' centres closer than this share of the lattice pitch are one mark's lobes, not two marks.
# On synthetic images apart from the held-out set nearly every cut that helps is 0.65-1.1 pitches
# apart; the real crop2's lobed craters measured 0.22-0.31 and crop3's stacked crescents 0.45-0.51.
MIN_SPACING = 0.6


def cut_by_shape(
    mask: np.ndarray,
    proba: np.ndarray,
    *,
    median: float,
    factor: float,
    min_explained: float = MIN_EXPLAINED,
    min_spacing: float = MIN_SPACING,
    components: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """``mask`` with each component of at least ``factor * median`` pixels cut into the marks of the
    tile's own shape it holds, where two or more fit a lattice's spacing. Nothing is added; other
    components are left exactly as they are, and ``mask`` itself is returned where nothing is cut.

    ``components`` are ``mask``'s 8-connected labels, stats and centroids where the caller has them
    (:func:`am.model.components.label`)."""
    if mask.shape != proba.shape or mask.ndim != 2:
        raise InputError(f"mask {mask.shape} and probabilities {proba.shape} must be 2-D of one shape")
    labels, stats, centroids = parts_of(mask, components)
    area = stats[:, cv2.CC_STAT_AREA]
    large = [k for k in range(1, len(stats)) if area[k] >= factor * median and round(area[k] / median) >= 2]
    if not large:
        return mask
    references = _lone_marks(stats, mask.shape, median)
    if len(references) < MIN_REFERENCES:
        return mask
    template, radius = _template(labels, stats, centroids, references)
    pitch: float | None = None  # read once, and only for a tile where some component takes two templates
    out = mask
    for index in large:
        x, y, w, h = (int(v) for v in stats[index, :4])
        box = (slice(y, y + h), slice(x, x + w))
        inside = labels[box] == index
        centres = _place(inside, template, radius, round(area[index] / median), min_explained)
        if len(centres) < 2:
            continue
        if pitch is None:
            pitch = estimate_pitch(mask.view(np.uint8) * np.uint8(255)) or float("inf")
        if _closest_pair(centres) < min_spacing * pitch:
            continue
        keep = part_regions(_assign(inside, centres, template, radius), proba[box])
        out = out.copy() if out is mask else out
        out[box] &= ~inside | keep
    return out


def _lone_marks(stats: np.ndarray, shape: tuple[int, ...], median: float) -> np.ndarray:
    """Indices of the components away from the edge whose area is within REFERENCE_RANGE of ``median``."""
    area = stats[:, cv2.CC_STAT_AREA]
    low, high = REFERENCE_RANGE
    lone = ~on_edge(stats, shape) & (area >= low * median) & (area <= high * median)
    lone[0] = False
    return np.flatnonzero(lone)


def _template(labels: np.ndarray, stats: np.ndarray, centroids: np.ndarray,
              references: np.ndarray) -> tuple[np.ndarray, int]:
    """The share of lone marks covering each pixel around their centroids (float32, square of side
    ``2 * radius + 1``), and that radius."""
    x, y, w, h = (stats[references, i].astype(np.float64) for i in range(4))
    cx, cy = centroids[references, 0], centroids[references, 1]
    reach = np.maximum.reduce([cx - x, x + w - cx, cy - y, y + h - cy])
    radius = int(np.ceil(reach.max())) + 1
    side = 2 * radius + 1
    template = np.zeros((side, side), np.float32)
    height, width = labels.shape
    for k, (col, row) in zip(references, np.rint(centroids[references]).astype(int), strict=True):
        top, left = row - radius, col - radius
        rows = slice(max(top, 0), min(top + side, height))
        cols = slice(max(left, 0), min(left + side, width))
        template[rows.start - top : rows.stop - top, cols.start - left : cols.stop - left] += labels[rows, cols] == k
    return template / len(references), radius


def _place(inside: np.ndarray, template: np.ndarray, radius: int, count: int,
           min_explained: float) -> list[tuple[int, int]]:
    """Up to ``count`` template centres (row, col in ``inside``'s box), each where the template covers
    the most component pixels that earlier ones left, while that is at least ``min_explained`` of it."""
    shape = (template >= TEMPLATE_SHARE).astype(np.float32)
    needed = min_explained * float(shape.sum())
    left = np.pad(inside.astype(np.float32), radius)
    centres: list[tuple[int, int]] = []
    for _ in range(count):
        cover = cv2.matchTemplate(left, shape, cv2.TM_CCORR)
        row, col = np.unravel_index(int(np.argmax(cover)), cover.shape)
        if cover[row, col] < needed:
            break
        centres.append((int(row), int(col)))
        left[row : row + shape.shape[0], col : col + shape.shape[1]] *= 1.0 - shape
    return centres


def _assign(inside: np.ndarray, centres: list[tuple[int, int]], template: np.ndarray, radius: int) -> np.ndarray:
    """Each pixel of ``inside`` labelled 1.. by the placed template covering it most (the nearest
    centre among equals, and for pixels no template covers)."""
    rows, cols = np.nonzero(inside)
    side = template.shape[0]
    score = np.empty((len(centres), rows.size), np.float32)
    for i, (row, col) in enumerate(centres):
        dy, dx = rows - row + radius, cols - col + radius
        within = (dy >= 0) & (dy < side) & (dx >= 0) & (dx < side)
        cover = np.zeros(rows.size, np.float32)
        cover[within] = template[dy[within], dx[within]]
        score[i] = cover - 1e-3 * np.hypot(rows - row, cols - col)
    regions = np.zeros(inside.shape, np.int32)
    regions[rows, cols] = np.argmax(score, axis=0) + 1
    return regions


def _closest_pair(centres: list[tuple[int, int]]) -> float:
    points = np.asarray(centres, np.float64)
    gaps = np.hypot(*(points[:, None, :] - points[None, :, :]).transpose(2, 0, 1))
    return float(gaps[np.triu_indices(len(points), 1)].min())


__all__ = ["MIN_EXPLAINED", "MIN_SPACING", "cut_by_shape"]
