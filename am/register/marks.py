"""Registration, step 1: find the ablation marks in a stitched mask.

A mark is a connected component (8-connected) of the mask that survives a 2x2 opening by
reconstruction (so one-pixel specks and lines go, but thin crescent tips keep their pixels) and
is not much smaller than a typical mark, unless the image edge cuts it. Each mark gets two points:

- its centre (the centroid of its pixels), which the lattice is fitted to and marks are numbered
  by. It sits at the same offset from the ablation centre for every mark of one shape (in the hole
  of a crescent or a "C"), to a fraction of a pixel, and a blob stuck to the mark pulls it only by
  the blob's share of the pixels. The centre of the largest inscribed circle, used before, is
  neither: on a ring of even thickness it jumps round the ring with pixel rounding (+-0.2 of the
  pitch across the rows, enough to split rows), and a blob fatter than a thin crescent takes it
  over entirely, so the mark left its node;
- a point on the mark, the pixel of it nearest its centre (the centre itself where that is on
  the mark), which the table and the overlay report::

    comps = find_components(mask)
    comps.x, comps.y, comps.area       # one entry per mark: centres, for the fit and the numbering
    comps.mark_x, comps.mark_y         # points on the marks, for the table

Everything here is vectorised or works on one mark's bounding box, never on the whole image per
mark, so a 10000 x 10000 mask with 10^4 marks takes about a second.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from am.errors import InputError

log = logging.getLogger(__name__)

# Specks smaller than this are noise whatever the marks' size.
MIN_AREA_FLOOR_PX = 4
# A component smaller than this fraction of the typical mark is debris or noise.
MIN_AREA_FRACTION = 0.15
# With at least this many components (a grid's 4 marks and a blob), one holding more than this
# share of the foreground, and more than DOMINANT_TIMES_MEAN times an even share, is not a mark
# (no lattice of that many marks has one that large) and does not set the typical area.
DOMINANT_MIN_COMPONENTS = 5
DOMINANT_SHARE = 0.1
DOMINANT_TIMES_MEAN = 3.0


@dataclass(frozen=True)
class Components:
    """The marks of a mask: component labels plus one entry per kept mark.

    ``labels`` is the int32 label image of every component (kept or not); ``label``, ``x``,
    ``y`` (centres), ``mark_x``, ``mark_y`` (points on the marks), ``area`` and ``bbox`` (x, y,
    w, h) describe the kept ones, in label order. Of the ``dropped`` components, ``thin`` went
    because no 2 x 2 square fits in them (lines, specks), whatever their area; the others were
    under ``min_area``.
    """

    labels: np.ndarray
    n_labels: int
    label: np.ndarray
    x: np.ndarray
    y: np.ndarray
    mark_x: np.ndarray
    mark_y: np.ndarray
    area: np.ndarray
    bbox: np.ndarray
    typical_area: float
    min_area: int
    dropped: int
    thin: int = 0

    @property
    def points(self) -> np.ndarray:
        """The marks' centres, shape (N, 2): what the lattice is fitted to."""
        return np.column_stack([self.x, self.y])


def check_mask(mask: np.ndarray) -> np.ndarray:
    """Return ``mask`` as a 2-D array; reject anything that cannot be a segmentation mask."""
    if not isinstance(mask, np.ndarray) or mask.ndim != 2 or mask.size == 0:
        shape = getattr(mask, "shape", None)
        raise InputError(f"the mask must be a non-empty 2-D array (height x width), got shape {shape}")
    if mask.shape[0] > 65535 * 4 or mask.shape[1] > 65535 * 4:
        raise InputError(f"the mask of {mask.shape[1]} x {mask.shape[0]} px is larger than registration supports")
    return mask


def find_components(mask: np.ndarray) -> Components:
    """Label the mask's components, drop noise and debris too small to be marks, place a point in each."""
    mask = check_mask(mask)
    binary = (mask > 0).view(np.uint8)
    n_labels, labels, stats, centroids = cv2.connectedComponentsWithStats(binary, connectivity=8, ltype=cv2.CV_32S)
    # Opening by reconstruction: keep a whole component if any 2x2 block of it is set.
    core = cv2.erode(binary, np.ones((2, 2), np.uint8))
    has_core = np.bincount(labels[core.view(bool)], minlength=n_labels) > 0
    del core, binary
    has_core[0] = False
    areas = stats[:, cv2.CC_STAT_AREA].astype(np.int64)
    candidates = np.nonzero(has_core & (areas >= MIN_AREA_FLOOR_PX))[0]
    typical = typical_mark_area(areas[candidates])
    min_area = max(MIN_AREA_FLOOR_PX, int(np.ceil(MIN_AREA_FRACTION * typical)))
    x, y, w, h = (stats[candidates, i] for i in range(4))
    height, width = labels.shape
    cut_by_edge = (x <= 0) | (y <= 0) | (x + w >= width) | (y + h >= height)
    # A mark cut by the image edge may show only a sliver; it is still that node's mark.
    kept = candidates[(areas[candidates] >= min_area) | cut_by_edge]
    dropped = int(n_labels - 1 - kept.size)
    thin = int(np.count_nonzero(~has_core[1:]))
    log.debug("%d components, %d kept (typical area %.1f px, minimum %d px)",
              n_labels - 1, kept.size, typical, min_area)
    bbox = stats[kept, :4].astype(np.int64)
    xs, ys = centroids[kept, 0].astype(float), centroids[kept, 1].astype(float)
    mark_x, mark_y = points_on_marks(labels, kept, bbox, xs, ys)
    return Components(
        labels=labels,
        n_labels=int(n_labels),
        label=kept.astype(np.int64),
        x=xs,
        y=ys,
        mark_x=mark_x,
        mark_y=mark_y,
        area=areas[kept],
        bbox=bbox,
        typical_area=typical,
        min_area=min_area,
        dropped=dropped,
        thin=thin,
    )


def typical_mark_area(areas: np.ndarray) -> float:
    """The pixel-weighted median area: half the foreground lies in components at most this big.

    Weighting by pixels makes many tiny specks count for little, so noise cannot drag the
    estimate (and with it the minimum mark area) down. The same weighting would let one huge
    region (a saturated blob, a fold) make itself the typical mark and every real mark debris,
    so one holding far more than its share of the foreground is left out (a 4 x 4 grid and a fold
    larger than all its marks together would otherwise make every mark debris).
    """
    if areas.size == 0:
        return 0.0
    if areas.size >= DOMINANT_MIN_COMPONENTS:
        share = max(DOMINANT_SHARE, DOMINANT_TIMES_MEAN / areas.size)
        ordinary = areas[areas <= share * areas.sum()]
        areas = ordinary if ordinary.size else areas
    order = np.sort(areas)
    cumulative = np.cumsum(order)
    return float(order[np.searchsorted(cumulative, cumulative[-1] / 2.0)])


def points_on_marks(
    labels: np.ndarray, kept: np.ndarray, bbox: np.ndarray, xs: np.ndarray, ys: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each kept label, its centre (xs, ys) where that lies on the mark, else its pixel nearest
    the centre. Only marks whose centre misses them (crescents, "C"s) are looked at on their box."""
    height, width = labels.shape
    col = np.clip(np.rint(xs).astype(np.int64), 0, width - 1)
    row = np.clip(np.rint(ys).astype(np.int64), 0, height - 1)
    mark_x, mark_y = xs.copy(), ys.copy()
    for i in np.nonzero(labels[row, col] != kept)[0].tolist():
        x0, y0, w, h = (int(v) for v in bbox[i])
        px, py = point_on_mark(labels[y0 : y0 + h, x0 : x0 + w] == kept[i], xs[i] - x0, ys[i] - y0,
                               origin=(x0, y0))
        mark_x[i], mark_y[i] = x0 + px, y0 + py
    return mark_x, mark_y


def point_on_mark(
    component: np.ndarray, cx: float, cy: float, *, origin: tuple[int, int] = (0, 0)
) -> tuple[float, float]:
    """A point of a component (a boolean crop) for the table: (cx, cy) where its pixel is the
    component's, else the component's pixel nearest to it, so the point always lies on the mark.

    ``origin`` is the crop's top-left pixel in the image. The pixel tested is the one the table's
    point rounds to in the image: rounding half to even in the crop picked another pixel for a
    centre at .5 where the crop starts at an odd pixel, and the table pointed at background.
    """
    h, w = component.shape
    x0, y0 = origin
    col, row = int(np.rint(x0 + cx)) - x0, int(np.rint(y0 + cy)) - y0
    if 0 <= row < h and 0 <= col < w and component[row, col]:
        return cx, cy
    ys, xs = np.nonzero(component)
    nearest = int(np.argmin((xs - cx) ** 2 + (ys - cy) ** 2))
    return float(xs[nearest]), float(ys[nearest])


def mark_points(
    component: np.ndarray, *, origin: tuple[int, int] = (0, 0)
) -> tuple[tuple[float, float], tuple[float, float]]:
    """The centre (centroid) of a component given as a boolean crop whose top-left pixel is
    ``origin`` in the image, and its point on the mark (both in crop coordinates)."""
    ys, xs = np.nonzero(component)
    cx, cy = float(xs.mean()), float(ys.mean())
    return (cx, cy), point_on_mark(component, cx, cy, origin=origin)
