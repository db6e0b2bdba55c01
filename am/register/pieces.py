"""Registration, before the fit: marks the segmentation drew in two pieces, joined for the fit.

A mark drawn as two pieces (a lobed crater whose lobes are outlined apart, a disc cut through)
gives two points a fraction of the pitch apart. Where many marks are like that, the
nearest-neighbour vectors that :func:`am.register.fit.initial_steps` reads run from piece to
piece, and the lattice found is a dense, sheared one of pieces: on the real crop2 (lobed dark
craters, a 6 x 7 grid 38 x 40 px apart) a 31 x 20 lattice 13 x 25 px apart, 550 of its nodes empty.

Two points are pieces of one mark when each is the other's nearest neighbour and both lie at
most ``PIECE_RATIO`` times as far from each other as from their next neighbour: on a lattice every
mark has two neighbours about equally far (one each way along the nearest axis), so a close
partner and nothing else nearby is the mark of a piece. Their area-weighted mean stands for the
mark. The lattice fitted to the joined points replaces the one fitted to the pieces only where it
holds marks on clearly more of its nodes (:func:`node_occupancy`): a regular grid fits the same
lattice either way and keeps its fit. Since occupancy judges it, the joined points' rows may be
placed where they are though more of them sit off their nodes than the uneven model alone allows:
a lobe whose partner did not pair sits 0.3-0.45 of the pitch off its node. Only the fit sees
joined points; every component is numbered on its own, and two pieces on one node become one
mark's fragments (:func:`am.register.grid.assign_nodes`). Pieces as far from each other as from
the pieces of the neighbouring marks (a "C" cut in two, an ellipse 0.7 of the pitch long cut across) cannot be told
from neighbours and stay apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from am.register.fit import FIT_INLIER_FRACTION, LatticeFit

# Two mutual nearest neighbours are pieces of one mark when they are at most this fraction as far
# from each other as each is from its second-nearest neighbour.
PIECE_RATIO = 0.55
# The joined lattice is tried where at least this fraction of the points pair up: a few marks cut
# in two do not move the medians that the fit starts from.
MIN_PAIRED_FRACTION = 0.15
# The joined points' lattice is kept when it holds marks on this many times the share of its nodes,
# and on at least this share (points scattered at random join into no lattice either).
OCCUPANCY_GAIN = 1.25
MIN_OCCUPANCY = 0.7


@dataclass(frozen=True)
class JoinedPoints:
    """Points with pairs of pieces replaced by their area-weighted mean; ``pairs`` were joined."""

    points: np.ndarray
    area: np.ndarray
    pairs: int


def join_pieces(points: np.ndarray, area: np.ndarray) -> JoinedPoints:
    """Join each pair of points that look like two pieces of one mark (see the module docstring)."""
    points = np.asarray(points, float)
    area = np.asarray(area, float)
    if len(points) < 3:
        return JoinedPoints(points, area, 0)
    distance, neighbour = cKDTree(points).query(points, k=3)
    nearest = neighbour[:, 1]
    own = np.arange(len(points))
    close = distance[:, 1] <= PIECE_RATIO * distance[:, 2]
    paired = (nearest[nearest] == own) & close & close[nearest] & (own < nearest)
    first, second = own[paired], nearest[paired]
    weight = area[first] + area[second]
    means = (points[first] * area[first, None] + points[second] * area[second, None]) / weight[:, None]
    alone = np.ones(len(points), bool)
    alone[first] = alone[second] = False
    return JoinedPoints(
        points=np.concatenate([points[alone], means]),
        area=np.concatenate([area[alone], weight]),
        pairs=int(first.size),
    )


def node_occupancy(fit: LatticeFit, points: np.ndarray) -> float:
    """The share of the lattice's nodes that hold a point, over the block of rows and columns the
    points occupy (its outer 1 % on each side left out, where debris near a stray node would reach).

    A lattice of pieces is denser than the marks' and many of its nodes stay empty; the marks' own
    lattice holds one on nearly every node.
    """
    col, row, residual = fit.indices(np.asarray(points, float))
    near = residual <= FIT_INLIER_FRACTION * fit.pitch
    if not near.any():
        return 0.0
    col, row = col[near], row[near]
    col_lo, col_hi = np.percentile(col, [1, 99]).round().astype(np.int64)
    row_lo, row_hi = np.percentile(row, [1, 99]).round().astype(np.int64)
    inside = (col >= col_lo) & (col <= col_hi) & (row >= row_lo) & (row <= row_hi)
    occupied = np.unique(np.column_stack([col[inside], row[inside]]), axis=0).shape[0]
    return occupied / float((col_hi - col_lo + 1) * (row_hi - row_lo + 1))
