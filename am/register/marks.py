"""Registration, step 1: find the ablation marks in a stitched mask.

A mark is a connected component (8-connected) of the mask that survives a 2x2 opening by
reconstruction (so one-pixel specks and lines go, but thin crescent tips keep their pixels) and
is not much smaller than a typical mark, unless the image edge cuts it. Each mark gets a
representative point that lies inside it: the centre of its largest inscribed circle, not its
centroid, which for a crescent or a "C" falls in the hole::

    comps = find_components(mask)
    comps.x, comps.y, comps.area     # one entry per mark, all inside the marks

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
# Pixels whose distance to the background is within this of the maximum form the "centre plateau".
PLATEAU_PX = 0.5
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
    ``y``, ``area`` and ``bbox`` (x, y, w, h) describe the kept ones, in label order.
    """

    labels: np.ndarray
    n_labels: int
    label: np.ndarray
    x: np.ndarray
    y: np.ndarray
    area: np.ndarray
    bbox: np.ndarray
    typical_area: float
    min_area: int
    dropped: int

    @property
    def points(self) -> np.ndarray:
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
    n_labels, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8, ltype=cv2.CV_32S)
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
    log.debug("%d components, %d kept (typical area %.1f px, minimum %d px)",
              n_labels - 1, kept.size, typical, min_area)
    bbox = stats[kept, :4].astype(np.int64)
    xs = np.empty(kept.size)
    ys = np.empty(kept.size)
    for i, (lab, (x0, y0, w, h)) in enumerate(zip(kept, bbox, strict=True)):
        crop = labels[y0 : y0 + h, x0 : x0 + w] == lab
        px, py = interior_point(crop)
        xs[i], ys[i] = x0 + px, y0 + py
    return Components(
        labels=labels,
        n_labels=int(n_labels),
        label=kept.astype(np.int64),
        x=xs,
        y=ys,
        area=areas[kept],
        bbox=bbox,
        typical_area=typical,
        min_area=min_area,
        dropped=dropped,
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


def interior_point(component: np.ndarray) -> tuple[float, float]:
    """A point inside a component given as a boolean crop: the centre of its largest inscribed circle.

    Where the circle's centre is a plateau (a disc has a few equally deep pixels), the plateau's
    mean is used for sub-pixel precision, unless that mean falls outside the component (a curved
    ridge in a crescent), in which case the plateau pixel nearest to it is.
    """
    padded = cv2.copyMakeBorder(component.view(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    ys, xs = np.nonzero(dist >= dist.max() - PLATEAU_PX)
    cx, cy = float(xs.mean()), float(ys.mean())
    if not padded[int(round(cy)), int(round(cx))]:
        nearest = int(np.argmin((xs - cx) ** 2 + (ys - cy) ** 2))
        cx, cy = float(xs[nearest]), float(ys[nearest])
    return cx - 1.0, cy - 1.0
