"""Registration, between fitting and numbering: split components that cover several nodes.

Segmentation sometimes joins two neighbouring marks with a bridge. Once the lattice is known,
such a component is recognisable (much larger than a typical mark) and separable: every pixel
goes to its nearest lattice node, and each node that collects at least a third of a typical
mark becomes a mark of its own. Small leftovers (the bridge) join the nearest of those parts.
Only the few oversized components are touched, each on its bounding box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from am.register.fit import LatticeFit
from am.register.marks import Components, mark_points

# A component this many times the typical area (or as long in x or y) may hold several marks.
OVERSIZE_AREA = 1.6
OVERSIZE_SIDE = 1.5
# A node's share of a component becomes a mark when it has this fraction of a typical mark's area ...
PART_MIN_AREA = 0.3
# ... and is no larger than a mark can be: a share of more than PART_MAX_AREA typical marks that also
# fills more than PART_MAX_CELL of its lattice cell is part of a blob, fold or debris lying over
# the node (marks joined by a bridge leave each node about one mark, and marks fill at most about
# half their cell; a mark the blob touches keeps its share under it). Its pixels get no id. The
# shares at a blob's rim fill less of their cells and still pass for marks.
PART_MAX_AREA = 2.0
PART_MAX_CELL = 0.6


@dataclass(frozen=True)
class SplitComponent:
    """One component cut into parts: ``part_map`` (its bounding box) holds 1..k for part k, 0 elsewhere
    (outside the component, or on a share too large to be a mark: ``unclaimed_px`` of them).
    ``x``, ``y`` are the parts' centres, ``mark_x``, ``mark_y`` points on them, as for whole marks
    (:mod:`am.register.marks`)."""

    label: int
    x0: int
    y0: int
    part_map: np.ndarray
    x: np.ndarray
    y: np.ndarray
    mark_x: np.ndarray
    mark_y: np.ndarray
    area: np.ndarray
    unclaimed_px: int = 0


def split_oversized(comps: Components, fit: LatticeFit) -> dict[int, SplitComponent]:
    """Split the components that straddle several nodes; keyed by their index in ``comps``."""
    sides = np.maximum(comps.bbox[:, 2], comps.bbox[:, 3])
    typical_side = float(np.median(sides)) if sides.size else 0.0
    oversized = np.nonzero(
        (comps.area > OVERSIZE_AREA * comps.typical_area) | (sides > OVERSIZE_SIDE * typical_side)
    )[0]
    result: dict[int, SplitComponent] = {}
    for i in oversized.tolist():
        piece = _split_one(comps, i, fit)
        if piece is not None:
            result[i] = piece
    return result


def _split_one(comps: Components, i: int, fit: LatticeFit) -> SplitComponent | None:
    x0, y0, w, h = (int(v) for v in comps.bbox[i])
    crop = comps.labels[y0 : y0 + h, x0 : x0 + w] == comps.label[i]
    ys, xs = np.nonzero(crop)
    points = np.column_stack([xs + x0, ys + y0]).astype(float)
    col, row, _ = fit.indices(points)
    keys, inverse, counts = np.unique(np.column_stack([col, row]), axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    big = np.nonzero(counts >= PART_MIN_AREA * comps.typical_area)[0]
    if big.size < 2:
        return None
    cell = abs(float(np.linalg.det(fit.basis)))
    blob = (counts[big] > PART_MAX_AREA * comps.typical_area) & (counts[big] > PART_MAX_CELL * cell)
    if blob.all():
        return None  # no share is a mark: the component stays whole, too large for any node
    centres = fit.positions(keys[big, 0], keys[big, 1])
    # Every pixel goes to the nearest kept node, so bridge pixels join a neighbour, not a new mark.
    owner = np.full(keys.shape[0], -1)
    owner[big] = np.arange(big.size)
    part = owner[inverse]
    loose = part < 0
    if loose.any():
        d = np.hypot(points[loose, None, 0] - centres[None, :, 0], points[loose, None, 1] - centres[None, :, 1])
        part[loose] = np.argmin(d, axis=1)
    # The blob's shares, and the loose pixels nearest them, are no part: parts are renumbered 0..k-1.
    n_parts = int(np.count_nonzero(~blob))
    renumber = np.full(big.size, -1)
    renumber[~blob] = np.arange(n_parts)
    part = renumber[part]
    claimed = part >= 0
    part_map = np.zeros((h, w), np.int32)
    part_map[ys[claimed], xs[claimed]] = part[claimed] + 1
    centre = np.empty((n_parts, 2))
    on_mark = np.empty((n_parts, 2))
    area = np.bincount(part[claimed], minlength=n_parts).astype(np.int64)
    # Each part on its own box: a fibre or scratch touching a row of marks makes one component as
    # large as the image, and hundreds of parts each scanning its whole box would take hours.
    for k, box in enumerate(ndimage.find_objects(part_map, max_label=n_parts)):
        left, top = x0 + box[1].start, y0 + box[0].start
        corner = np.array([left, top], float)
        (cx, cy), (mx, my) = mark_points(part_map[box] == k + 1, origin=(left, top))
        centre[k], on_mark[k] = corner + np.array([cx, cy]), corner + np.array([mx, my])
    return SplitComponent(label=int(comps.label[i]), x0=x0, y0=y0, part_map=part_map, x=centre[:, 0],
                          y=centre[:, 1], mark_x=on_mark[:, 0], mark_y=on_mark[:, 1], area=area,
                          unclaimed_px=int(np.count_nonzero(~claimed)))
