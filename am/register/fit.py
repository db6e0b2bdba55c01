"""Registration, step 2: fit the acquisition lattice to the marks' points.

The lattice is affine: ``p = origin + i * col_step + j * row_step`` for integer column ``i`` and
row ``j``, which covers rotation, a pitch per axis and a mild shear. Coordinates are rotated,
never the raster, so nothing is clipped or resampled.

1. The two steps are first read off nearest-neighbour vectors: for each mark, its shortest
   neighbour vector within 45 degrees of +x (a column step) and of +y (a row step); the medians
   of those, refined by the mean of the vectors close to them. Missing marks only lengthen a few
   vectors, which the medians ignore.
2. From a seed mark near the middle, a least-squares fit of (origin, col_step, row_step) to the
   marks' rounded lattice indices grows outwards, doubling the radius each round, so a small
   error in the first guess never accumulates into a wrong index at the far edge.

Indices are relative to the seed; :mod:`am.register.grid` decides which of them are row 0 and
column 0 of the acquisition::

    fit = fit_lattice(points)
    col, row, residual = fit.indices(points)
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from scipy.spatial import cKDTree

from am.errors import RegistrationError
from am.grid_shape import MIN_MARKS

if TYPE_CHECKING:
    from am.register.rows import RowLines

log = logging.getLogger(__name__)

# Neighbours examined per mark when looking for the lattice steps.
NEIGHBOURS = 8
# A mark whose point lies within this fraction of the pitch of a node is fitted to it.
FIT_INLIER_FRACTION = 0.3
# A mark belongs to a node when its point is within this fraction of the (smaller) pitch of it.
ASSIGN_TOLERANCE = 0.35
# The column step is the vector most marks' neighbours sit at: where the marks' shortest vectors
# within 45 degrees of +x part into two sets, the other set's vector replaces the more common one
# when at least this many times as many marks have a neighbour at it.
SUPPORT_GAIN = 1.3
# A mark has a neighbour at a step when one lies within this fraction of the step's length of it.
STEP_TOLERANCE = 0.2
# The other sets weighed against the more common one, largest first: the diagonals of a few pairs
# of close rows form one or two; more are debris.
MAX_ALTERNATIVES = 3
# The other sets are looked for among at most this many vectors, evenly spread: counting every
# vector's neighbours took seconds on a large noisy grid. The grids where a diagonal takes the vote
# (3-5 rows) have far fewer marks, so every vector of theirs is looked at.
MAX_CLUSTER_VECTORS = 4000
# The first fit uses marks within this many pitches of the seed; the radius then doubles.
SEED_RADIUS_PITCHES = 6.0
POLISH_ROUNDS = 2


@dataclass(frozen=True)
class LatticeFit:
    """An affine lattice in image pixels; index (0, 0) is at ``origin``.

    ``rows`` None is the regular lattice, row ``j`` at ``j * row_step``. Otherwise the rows are
    unevenly spaced (:mod:`am.register.rows`): node ``(i, j)`` lies at ``(i + rows.shift(j)) *
    col_step + rows.coord(j) * row_step``, the column step the same in every row.
    """

    origin: np.ndarray
    col_step: np.ndarray
    row_step: np.ndarray
    residual_px: float = 0.0
    rows: RowLines | None = None

    @property
    def basis(self) -> np.ndarray:
        return np.column_stack([self.col_step, self.row_step])

    @property
    def angle_deg(self) -> float:
        return math.degrees(math.atan2(self.col_step[1], self.col_step[0]))

    @property
    def pitch_x(self) -> float:
        return float(np.hypot(*self.col_step))

    @property
    def shear(self) -> float:
        """Row step's component along the column step, in column pitches (0 for a rectangular grid)."""
        return float(np.dot(self.row_step, self.col_step) / np.dot(self.col_step, self.col_step))

    @property
    def pitch_y(self) -> float:
        theta = math.radians(self.angle_deg)
        perpendicular = self.row_step - self.shear * self.col_step
        return float(np.dot(perpendicular, [-math.sin(theta), math.cos(theta)]))

    @property
    def pitch(self) -> float:
        """The smaller pitch: the scale every tolerance is measured in."""
        return min(self.pitch_x, abs(self.pitch_y))

    def lattice_coords(self, points: np.ndarray) -> np.ndarray:
        """Continuous (col, row) lattice coordinates of image points, shape (N, 2)."""
        return np.linalg.solve(self.basis, (np.asarray(points, float) - self.origin).T).T

    def indices(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Nearest node (col, row) of each point and the point's distance to it in pixels."""
        coords = self.lattice_coords(points)
        if self.rows is None:
            col, row = np.rint(coords).astype(np.int64).T
        else:
            row = self.rows.nearest(coords[:, 1])
            col = np.rint(coords[:, 0] - self.rows.shift(row)).astype(np.int64)
        residual = np.hypot(*(np.asarray(points, float) - self.positions(col, row)).T)
        return col, row, residual

    def positions(self, col: np.ndarray, row: np.ndarray) -> np.ndarray:
        """Image positions of nodes, shape (N, 2)."""
        col = np.asarray(col, float).reshape(-1, 1)
        row = np.asarray(row, float).reshape(-1, 1)
        if self.rows is not None:
            index = row.astype(np.int64)
            col, row = col + self.rows.shift(index), self.rows.coord(index)
        return self.origin[None, :] + col * self.col_step[None, :] + row * self.row_step[None, :]

    def moved_to(self, col: int, row: int) -> LatticeFit:
        """The same lattice with index (col, row) renumbered as (0, 0)."""
        origin = self.positions(np.array([col]), np.array([row]))[0]
        return replace(self, origin=origin, rows=None if self.rows is None else self.rows.moved_to(row))


def fit_lattice(points: np.ndarray, *, warnings: list[str] | None = None) -> LatticeFit:
    """Fit an affine lattice to mark points (N, 2); ``warnings`` collects what a person should know.

    Raises RegistrationError when there are too few marks or no regular spacing among them.
    """
    points = np.asarray(points, float)
    warnings = warnings if warnings is not None else []
    if len(points) < MIN_MARKS:
        raise RegistrationError(
            f"found only {len(points)} mark(s) in the mask; at least {MIN_MARKS} are needed to fit a grid: "
            "check that the mask is the segmentation of an acquisition"
        )
    tree = cKDTree(points)
    col_step, row_step = initial_steps(points, tree=tree, warnings=warnings)
    seed = _seed_index(points, col_step, row_step, tree=tree)
    fit = LatticeFit(origin=points[seed].copy(), col_step=col_step, row_step=row_step)
    distance = np.hypot(*(points - points[seed]).T)
    radius = SEED_RADIUS_PITCHES * fit.pitch
    while True:
        fit = _refit(fit, points[distance <= radius])
        if radius >= distance.max():
            break
        radius *= 2.0
    for _ in range(POLISH_ROUNDS):
        fit = _refit(fit, points)
    log.debug(
        "lattice: angle %.3f deg, pitch %.3f x %.3f px, shear %.4f, residual %.3f px",
        fit.angle_deg, fit.pitch_x, fit.pitch_y, fit.shear, fit.residual_px,
    )
    return fit


def refit(fit: LatticeFit, points: np.ndarray) -> LatticeFit:
    """One more least-squares round over ``points`` (after marks were split, for instance)."""
    return _refit(fit, np.asarray(points, float))


def _refit(fit: LatticeFit, points: np.ndarray) -> LatticeFit:
    if fit.rows is not None:
        return fit  # uneven rows are measured, not fitted: see am.register.rows
    col, row, residual = fit.indices(points)
    inlier = residual <= FIT_INLIER_FRACTION * fit.pitch
    if np.count_nonzero(inlier) < 3:
        return fit
    col, row, pts = col[inlier], row[inlier], points[inlier]
    n_cols, n_rows = np.unique(col).size, np.unique(row).size
    if n_cols >= 2 and n_rows >= 2:
        design = np.column_stack([np.ones(col.size), col, row]).astype(float)
        solution, *_ = np.linalg.lstsq(design, pts, rcond=None)
        if np.linalg.matrix_rank(design) < 3:
            return fit
        origin, col_step, row_step = solution
    elif n_cols >= 2:
        # A single row of marks: the row step cannot be measured, keep the estimate.
        design = np.column_stack([np.ones(col.size), col]).astype(float)
        solution, *_ = np.linalg.lstsq(design, pts - row[:, None] * fit.row_step[None, :], rcond=None)
        origin, col_step, row_step = solution[0], solution[1], fit.row_step
    elif n_rows >= 2:
        design = np.column_stack([np.ones(row.size), row]).astype(float)
        solution, *_ = np.linalg.lstsq(design, pts - col[:, None] * fit.col_step[None, :], rcond=None)
        origin, col_step, row_step = solution[0], fit.col_step, solution[1]
    else:
        return fit
    candidate = LatticeFit(origin=origin, col_step=col_step, row_step=row_step)
    if candidate.pitch < 0.5 * fit.pitch or abs(np.linalg.det(candidate.basis)) < 1e-6:
        return fit
    fitted = candidate.positions(col, row)
    rms = float(np.sqrt(np.mean(np.sum((pts - fitted) ** 2, axis=1))))
    return replace(candidate, residual_px=rms)


def initial_steps(
    points: np.ndarray, *, tree: cKDTree | None = None, warnings: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """First estimates of the column and row steps from nearest-neighbour vectors."""
    warnings = warnings if warnings is not None else []
    tree = tree if tree is not None else cKDTree(points)
    k = min(NEIGHBOURS + 1, len(points))
    distances, neighbours = tree.query(points, k=k)
    spacing = float(np.median(distances[:, 1]))
    if not spacing > 0:
        raise RegistrationError(
            f"the {len(points)} marks do not form a grid: most of them coincide; check the mask"
        )
    vectors = points[neighbours[:, 1:]] - points[:, None, :]
    col_step = _dominant_step(vectors, axis=0, spacing=spacing, points=points, tree=tree)
    row_step = _dominant_step(vectors, axis=1, spacing=spacing)
    if col_step is None and row_step is None:
        raise RegistrationError(
            f"the {len(points)} marks show no regular spacing along either image axis (+-45 degrees); "
            "check that the mask is the segmentation of an acquisition grid"
        )
    if row_step is None:
        row_step = np.array([-col_step[1], col_step[0]])
        warnings.append("no row-to-row spacing found (one row of marks?): assumed square pitch")
    if col_step is None:
        col_step = np.array([row_step[1], -row_step[0]])
        warnings.append("no column-to-column spacing found (one column of marks?): assumed square pitch")
    return col_step, row_step


def _dominant_step(
    vectors: np.ndarray, *, axis: int, spacing: float, points: np.ndarray | None = None,
    tree: cKDTree | None = None,
) -> np.ndarray | None:
    """The most common shortest neighbour vector within 45 degrees of +x (axis 0) or +y (axis 1).

    With the ``points`` (and their ``tree``), a column step held by clearly more marks replaces it
    (``SUPPORT_GAIN``). Rows are not checked so: on unevenly spaced rows every pair of rows has a
    step of its own, none held by most marks, and the fit reads the rows from the marks anyway.
    """
    other = 1 - axis
    v = vectors.copy()
    flip = v[..., axis] < 0
    v[flip] = -v[flip]
    length = np.hypot(v[..., 0], v[..., 1])
    usable = (np.abs(v[..., other]) < v[..., axis]) & (length >= 0.5 * spacing)
    length = np.where(usable, length, np.inf)
    best = np.argmin(length, axis=1)
    rows = np.arange(len(v))
    shortest = length[rows, best]
    found = np.isfinite(shortest)
    if np.count_nonzero(found) < 2:
        return None
    candidates = v[rows, best][found]
    lengths = shortest[found]
    typical = float(np.median(lengths))
    off = np.abs(lengths - typical)
    # The median of an even count may fall between two far-apart lengths and be near none.
    candidates = candidates[off <= max(0.2 * typical, float(off.min()))]
    step = _cluster_step(candidates, typical=typical)
    if axis != 0 or points is None or tree is None:
        return step
    # Rows 0.65-0.75 of the pitch apart that slide along themselves by up to a quarter of a column
    # put a neighbour of the next row diagonally, at about the column pitch or less and within 45
    # degrees of +x: on a grid of 3-5 rows the marks of such a pair of rows, half or more of all,
    # took that diagonal as the column step, the lattice's rows then ran across the grid's and 3-4
    # rows of marks filled 9-38 lattice rows. The column step repeats along every row, so nearly every
    # mark has a neighbour at it; a diagonal joins only the marks of the rows it links.
    # Where two such sets are about as large, their median may lie between them, at a vector
    # no mark has (a 3 x 6 grid: 7 marks at the column step, 8 at a diagonal): each set counts.
    held = _support(points, tree, step)
    if SUPPORT_GAIN * held > len(points):
        return step  # no other vector can be held by that many more marks: the usual grid, spared the search
    apart = candidates[np.hypot(*(candidates - step).T) > 0.1 * typical]
    apart = apart[::max(1, -(-len(apart) // MAX_CLUSTER_VECTORS))]
    others = _clusters(apart, radius=0.1 * typical)
    if not others:
        return step
    support = [_support(points, tree, other) for other in others]
    best = int(np.argmax(support))
    if support[best] > 0 and support[best] >= SUPPORT_GAIN * held:
        return others[best]
    return step


def _cluster_step(candidates: np.ndarray, *, typical: float) -> np.ndarray:
    """The vector most ``candidates`` cluster at: their median, refined by the mean of those near it."""
    centre = np.median(candidates, axis=0)
    close = candidates[np.hypot(*(candidates - centre).T) <= 0.1 * typical]
    return close.mean(axis=0) if len(close) else centre


def _clusters(candidates: np.ndarray, *, radius: float) -> list[np.ndarray]:
    """The vectors that two or more ``candidates`` cluster at, most held first, at most
    ``MAX_ALTERNATIVES``: the mean of the candidates within ``radius`` of the one with most such
    neighbours, then the same among the rest. Counted on a tree, so a large grid's many vectors
    cost no square matrix."""
    found: list[np.ndarray] = []
    rest = candidates
    while len(rest) >= 2 and len(found) < MAX_ALTERNATIVES:
        tree = cKDTree(rest)
        held = np.asarray(tree.query_ball_point(rest, radius, return_length=True))
        best = int(np.argmax(held))
        if held[best] < 2:
            break
        near = np.zeros(len(rest), bool)
        near[tree.query_ball_point(rest[best], radius)] = True
        found.append(rest[near].mean(axis=0))
        rest = rest[~near]
    return found


def _support(points: np.ndarray, tree: cKDTree, step: np.ndarray) -> int:
    """How many of the points have another point about ``step`` ahead of or behind them."""
    tolerance = STEP_TOLERANCE * float(np.hypot(*step))
    ahead, _ = tree.query(points + step, distance_upper_bound=tolerance)
    behind, _ = tree.query(points - step, distance_upper_bound=tolerance)
    return int(np.count_nonzero(np.isfinite(ahead) | np.isfinite(behind)))


def _seed_index(points: np.ndarray, col_step: np.ndarray, row_step: np.ndarray, *, tree: cKDTree) -> int:
    """A mark near the middle whose neighbours sit where the steps predict (not debris)."""
    tolerance = 0.2 * min(np.hypot(*col_step), np.hypot(*row_step))
    support = np.zeros(len(points), int)
    for step in (col_step, -col_step, row_step, -row_step):
        distance, _ = tree.query(points + step, distance_upper_bound=tolerance)
        support += np.isfinite(distance)
    centre = np.median(points, axis=0)
    order = np.argsort(np.hypot(*(points - centre).T))
    for need in (4, 3, 2):
        good = order[support[order] >= need]
        if good.size:
            return int(good[0])
    return int(order[0])
