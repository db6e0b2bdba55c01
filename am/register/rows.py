"""Registration of acquisitions whose rows are unevenly spaced.

A raster acquisition moves the stage along a row at a steady step, then on to the next row; on
some instruments that second move is not steady. The real `tile_b` sample shows it: its columns
are 67.6 px apart everywhere, while its rows are 43 to 90 px apart. A regular lattice cannot fit
such rows: whole rows of marks fall between its nodes and get no id or the wrong one.

When the regular fit is loose, the rows are found where the marks are instead: the density of
the marks' coordinates across the rows has one peak per row. Each peak becomes a row (a gap of
about twice the usual spacing keeps a number for a missing row), each row's slide along itself
is measured from its marks, and the columns keep the regular step. The uneven model replaces the
regular one only when it explains the marks far better, so a regular acquisition is never
affected::

    uneven = fit_uneven_rows(fit, points)   # None: the rows are regular after all
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import find_peaks
from scipy.spatial import cKDTree

from am.register.fit import ASSIGN_TOLERANCE, MIN_MARKS, LatticeFit
from am.register.grid import CONTRADICTION_FRACTION, FRAGMENT_MAX_AREA, full_row_count

log = logging.getLogger(__name__)

# Two rows are at least this fraction of the column pitch apart (rows of real acquisitions are
# at least 0.6 of it apart), and a mark belongs to a row within it.
ROW_GAP = 0.3
# How far the marks of one row scatter across it (fraction of the column pitch): the width of the
# density whose peaks are the rows.
ROW_SPREAD = 0.06
# A row needs this fraction of a full row's marks.
MIN_ROW_FRACTION = 0.3
# The uneven model is tried when the regular fit's residual passes this fraction of the pitch ...
LOOSE_RESIDUAL = 0.12
# ... and kept when its own residual is at most this fraction of the regular fit's, or when the
# regular fit leaves at least OFF_NODE_FRACTION of the marks off their nodes and the uneven one at
# most OFF_NODE_CUT times as many and no more than OFF_NODE_MAX: on crop2's mask (rows 24-45 px
# apart, marks in pieces, which keep the residual of either model high) 27 % off against 5 %;
# points scattered at random, 51-68 % against 14-18 %.
BETTER_BY = 0.5
OFF_NODE_FRACTION = 0.1
OFF_NODE_CUT = 0.5
OFF_NODE_MAX = 0.08
# Points closer than this fraction of the pitch may be pieces of one mark (rows are 0.64 apart on tile_b) ...
SAME_MARK = 0.5
# ... unless both are marks of their own: the smaller holds at least this fraction of a typical mark
# and together they hold more than the pieces of one mark can (as numbering counts them), which
# tile_a shows: two of its rows are 0.45 of the pitch apart.
OWN_MARK_AREA = 0.5
PAIR_AREA = FRAGMENT_MAX_AREA
# A gap of at least this many median spacings holds a row without marks.
MISSING_ROW_GAP = 1.7
# The rows' drift along themselves (a shear, in column pitches per row step) is searched within
# this range at this step; the regular fit's own shear is kept unless another drift lines the
# rows' offsets up clearly better (their coherence, 0 to 1, higher by more than SHEAR_MARGIN).
SHEAR_SEARCH = 0.5
SHEAR_STEP = 0.001
SHEAR_MARGIN = 0.02
# A row's whole-column offset may be moved by up to this many columns to line its first and last
# marks up with the other rows'.
ROW_END_REACH = 2
# Rows are lined up by their ends only where each holds a mark in at least this share of its columns.
ROW_END_FILL = 0.8
# A mark at a row's end more than this many columns from the next is left out of the row's span.
GAP_AT_END = 2
# Up to this many rows, every way of moving the rows by whole columns is weighed (_align_few_rows):
# a way counts where each row's offset then lies within SLIDE_LIMIT columns of one straight drift.
FEW_ROWS = 5
SLIDE_LIMIT = 0.35


@dataclass(frozen=True)
class RowLines:
    """Where rows ``first`` .. ``first + len(coords) - 1`` lie: ``coords`` across the rows, in
    row-step units, and ``shifts`` along them, in column-step units (a row may start off the
    columns of the others, as the stage's row starts drift).

    Beyond them rows continue at the median spacing with the shift of the nearest row, so nodes
    outside the marks (a missing edge row, the grid's placement) still have positions.
    """

    first: int
    coords: np.ndarray
    shifts: np.ndarray

    @property
    def spacing(self) -> float:
        """The median distance between neighbouring rows, in row-step units."""
        return float(np.median(np.diff(self.coords))) if self.coords.size > 1 else 1.0

    def coord(self, row: np.ndarray) -> np.ndarray:
        """Row coordinate of each integer row index (any shape)."""
        k = np.asarray(row, np.int64) - self.first
        inside = np.clip(k, 0, self.coords.size - 1)
        return self.coords[inside] + (k - inside) * self.spacing

    def shift(self, row: np.ndarray) -> np.ndarray:
        """Column shift of each integer row index (any shape)."""
        return self.shifts[np.clip(np.asarray(row, np.int64) - self.first, 0, self.shifts.size - 1)]

    def nearest(self, t: np.ndarray) -> np.ndarray:
        """Index of the row nearest to each continuous row coordinate ``t``."""
        t = np.asarray(t, float)
        last = self.coords.size - 1
        k = np.clip(np.searchsorted(self.coords, t), 1, max(last, 1))
        below = self.coords[np.maximum(k - 1, 0)]
        above = self.coords[np.minimum(k, last)]
        k = np.where(np.abs(t - below) <= np.abs(t - above), k - 1, k)
        k = np.minimum(k, last)
        spacing = self.spacing
        k = np.where(t < self.coords[0], np.rint((t - self.coords[0]) / spacing), k)
        k = np.where(t > self.coords[-1], last + np.rint((t - self.coords[-1]) / spacing), k)
        return k.astype(np.int64) + self.first

    def moved_to(self, row: int) -> RowLines:
        """The same rows with ``row`` renumbered as 0, at coordinate 0 and shift 0 (the lattice's
        origin moves onto that row's node, shift included)."""
        at = np.array([row])
        return RowLines(first=self.first - row, coords=self.coords - float(self.coord(at)[0]),
                        shifts=self.shifts - float(self.shift(at)[0]))


def fit_uneven_rows(
    fit: LatticeFit, points: np.ndarray, area: np.ndarray | None = None, *, typical_area: float | None = None,
    off_node_max: float = OFF_NODE_MAX, rows: int | None = None, cols: int | None = None,
) -> LatticeFit | None:
    """``fit`` with its rows where the marks are, or None when the regular rows serve as well.

    ``fit`` is a regular :class:`~am.register.fit.LatticeFit` and ``points`` the marks that fitted
    it (typical marks, not debris), with their ``area`` where known: of two points closer than
    half a pitch (the pieces of a mark the segmentation cut in two) only the larger counts, so a
    row of such pieces cannot pass for a row of marks. Two such points that are each about a
    mark's size (``typical_area``, default the median area) are two marks, in two close rows.
    ``off_node_max`` caps the share of marks the uneven rows may leave off their nodes where the
    residual alone does not decide (``OFF_NODE_MAX``, which rows fitted to points scattered at
    random exceed); a caller that tells such points apart by another test may raise it.

    ``rows``, the grid's number of rows where known, settles what the marks alone cannot. Rows
    0.65-0.75 and 1.2-1.3 of the usual gap apart fit a regular lattice of the shorter gap tightly,
    with a lattice row between the farther ones left empty: R rows of marks fill R + 1 lattice rows,
    which contradicts a grid of R rows, while R uneven rows, one per row of marks, fit it. And where
    as many rows of marks are found as the grid has, none of its rows is missing, however wide a gap.

    ``cols``, the grid's number of columns where known, does the same across the rows. Rows slid
    along themselves by up to a quarter of a column in turn one way and the other fit a regular
    lattice sheared by about half a column per row, tightly: its rows then run a column apart at
    their ends, so that together they fill a column more than the grid has, while uneven rows under
    the rows' own drift keep every row within the grid's columns.
    """
    points = np.asarray(points, float)
    if len(points) < MIN_MARKS:
        return None
    loose = _rms(fit, points) > LOOSE_RESIDUAL * fit.pitch
    overflow = rows is not None and _too_many_rows(fit, points, rows)
    col_overflow = cols is not None and _column_span(fit, points) > cols
    if not (loose or overflow or col_overflow):
        return None
    if area is not None:
        area = np.asarray(area, float)
        typical = float(np.median(area)) if typical_area is None else float(typical_area)
        points = points[_one_per_mark(points, area, within=SAME_MARK * fit.pitch, typical_area=typical)]
    regular_rms = _rms(fit, points)
    lines = _row_lines(fit, points, rows=rows)
    if lines is None:
        return None
    uneven = replace(lines[0], rows=lines[1])
    uneven_rms = _rms(uneven, points)
    regular_off, uneven_off = _off_node(fit, points), _off_node(uneven, points)
    closer = uneven_rms <= BETTER_BY * regular_rms
    more_on_nodes = (regular_off >= OFF_NODE_FRACTION and uneven_off <= min(OFF_NODE_CUT * regular_off, off_node_max)
                     and uneven_rms < regular_rms)
    # A few pieces of debris off the uneven rows' nodes can hold most of their squared residual,
    # while the regular rows' is spread over every mark: each point's distance counts only up to
    # the tolerance of a node here, over the points either lattice holds, where the uneven rows leave
    # no more points off their nodes than the cap allows (rows fitted to points scattered at random
    # leave more).
    uneven_held_rms, regular_held_rms = _held_clipped_rms(uneven, fit, points)
    closer_on_nodes = uneven_off <= off_node_max and uneven_held_rms <= BETTER_BY * regular_held_rms
    # Where the regular rows cannot hold the marks in the rows given, uneven rows as many as given
    # that fit tightly, leaving no more marks off their nodes than the cap, are the grid. Not closer
    # than the regular rows, necessarily: those have a lattice row between each wide gap's rows,
    # near whose nodes debris may fall.
    fills_the_rows = (overflow and uneven.rows.coords.size == rows and uneven_off <= off_node_max
                      and _clipped_rms(uneven, points) <= LOOSE_RESIDUAL * fit.pitch)
    # Likewise where the regular rows' ends do not line up within the columns given: uneven rows, as
    # many as the grid has, whose ends do, tightly and with no more marks off their nodes than the cap.
    fills_the_columns = (col_overflow and (rows is None or uneven.rows.coords.size == rows)
                         and _column_span(uneven, points) <= cols and uneven_off <= off_node_max
                         and _clipped_rms(uneven, points) <= LOOSE_RESIDUAL * fit.pitch)
    if not ((loose and (closer or more_on_nodes or closer_on_nodes)) or fills_the_rows or fills_the_columns):
        log.debug("uneven rows fit no better (%.2f px against %.2f px, %.0f %% of the marks off their nodes "
                  "against %.0f %%)", uneven_rms, regular_rms, 100 * uneven_off, 100 * regular_off)
        return None
    log.info("rows are unevenly spaced: %d rows of marks fit with a residual of %.2f px, against %.2f px for "
             "evenly spaced rows", uneven.rows.coords.size, uneven_rms, regular_rms)
    return replace(uneven, residual_px=uneven_rms)


def _rms(fit: LatticeFit, points: np.ndarray) -> float:
    """Root mean square distance of the points from their nearest nodes, in pixels."""
    _, _, residual = fit.indices(points)
    return float(np.sqrt(np.mean(residual**2)))


def _too_many_rows(fit: LatticeFit, points: np.ndarray, rows: int) -> bool:
    """Whether the regular lattice ``fit`` puts well-filled rows of the points (at least half a
    full row's nodes, as :func:`am.register.grid.place_axis` counts them) farther apart than
    ``rows`` consecutive lattice rows reach, so that a grid of that many rows cannot hold them."""
    col, row, residual = fit.indices(points)
    on = residual <= ASSIGN_TOLERANCE * fit.pitch
    if not on.any():
        return False
    nodes = np.unique(np.column_stack([col[on], row[on]]), axis=0)
    counts = np.bincount(nodes[:, 1] - nodes[:, 1].min())
    full = full_row_count(counts)
    clear = np.nonzero(counts >= max(2.0, CONTRADICTION_FRACTION * full))[0]
    return clear.size > 0 and int(clear[-1] - clear[0]) + 1 > rows


def _column_span(fit: LatticeFit, points: np.ndarray) -> int:
    """How many lattice columns the well-filled rows of the points span together under ``fit``: rows
    holding at least half a full row's marks (as :func:`_too_many_rows` counts them), each without
    marks set apart at its ends (:func:`_trimmed`, debris beside the grid). Rows of one grid start
    and end in the same columns, so more columns than the grid has means rows numbered a column off."""
    col, row, residual = fit.indices(points)
    on = residual <= ASSIGN_TOLERANCE * fit.pitch
    if not on.any():
        return 0
    lattice_rows, counts = np.unique(row[on], return_counts=True)
    full = full_row_count(counts)
    clear = lattice_rows[counts >= max(2.0, CONTRADICTION_FRACTION * full)]
    spans = [_trimmed(col[on & (row == r)]) for r in clear]
    if not spans:
        return 0
    return int(max(int(s.max()) for s in spans) - min(int(s.min()) for s in spans) + 1)


def _held_clipped_rms(first: LatticeFit, second: LatticeFit, points: np.ndarray) -> tuple[float, float]:
    """:func:`_clipped_rms` of two lattices over the points that at least one of them holds on a node.

    A point off the nodes of both (debris) adds the same to either sum, which only draws the two
    figures together: 3 pieces of debris among a 5 x 6 grid's 30 marks, whose uneven rows hold every
    mark within 1 px, left them 0.54 of the regular rows' figure, a row of which sat 12 px off its
    nodes, and the regular rows numbered every mark a row off. Over the points either holds, 0.35.
    """
    residuals = [fit.indices(points)[2] for fit in (first, second)]
    tolerances = [ASSIGN_TOLERANCE * fit.pitch for fit in (first, second)]
    held = (residuals[0] <= tolerances[0]) | (residuals[1] <= tolerances[1])
    if not held.any():
        held[:] = True
    first_rms, second_rms = (float(np.sqrt(np.mean(np.minimum(r[held], t) ** 2)))
                             for r, t in zip(residuals, tolerances, strict=True))
    return first_rms, second_rms


def _clipped_rms(fit: LatticeFit, points: np.ndarray) -> float:
    """:func:`_rms` with each distance capped at the tolerance within which a mark is numbered: a
    point off every node (debris) counts the same against any lattice, however far off it lies."""
    _, _, residual = fit.indices(points)
    return float(np.sqrt(np.mean(np.minimum(residual, ASSIGN_TOLERANCE * fit.pitch) ** 2)))


def _off_node(fit: LatticeFit, points: np.ndarray) -> float:
    """The fraction of the points too far from their nearest node to be numbered."""
    _, _, residual = fit.indices(points)
    return float(np.mean(residual > ASSIGN_TOLERANCE * fit.pitch))


def _row_lines(fit: LatticeFit, points: np.ndarray, *, rows: int | None = None) -> tuple[LatticeFit, RowLines] | None:
    """Rows as peaks of the marks' coordinates across the rows, missing rows interpolated (none where
    there are as many peaks as the grid's ``rows``, where known), and ``fit`` with the shear those
    rows show.

    The regular fit may have taken up the rows' slides as a shear it does not have (0.15-0.2
    column pitches per row on synthetic grids of unevenly spaced rows): measured against it, the
    slides then change by more than half a column from one row to the next and the unwrapping
    gives whole rows the ids of their neighbours' columns. So the shear is read again from the
    rows themselves before their offsets are unwrapped.
    """
    coords = fit.lattice_coords(points)
    unit = abs(fit.pitch_y)  # pixels per row-coordinate unit, across the rows
    across = coords[:, 1] * unit
    peaks = _row_peaks(across, spread=ROW_SPREAD * fit.pitch_x, min_gap=ROW_GAP * fit.pitch_x)
    if peaks.size < 2:
        return None
    # Each row's marks: those nearer to its peak than to any other, and within half the gap to it.
    above = np.clip(np.searchsorted(peaks, across), 1, peaks.size - 1)
    nearest = np.where(across - peaks[above - 1] <= peaks[above] - across, above - 1, above)
    near = np.abs(across - peaks[nearest]) <= ROW_GAP * fit.pitch_x
    members = [np.nonzero(near & (nearest == k))[0] for k in range(peaks.size)]
    centres = np.array([float(np.median(coords[m, 1])) for m in members])
    # Each row's offset is known only up to whole columns. Along the column step, unsheared, it is
    # the row's slide plus the grid's true drift; once that drift is taken out, neighbouring rows
    # differ by far less than half a column, so unwrapping keeps a column's number from row to row.
    along = np.array([_circular_offset(coords[m, 0]) for m in members]) + fit.shear * centres
    prior = fit.shear
    shear = _row_drift(along, centres, prior=prior)
    fit = replace(fit, row_step=fit.row_step + (shear - fit.shear) * fit.col_step)
    shifts = np.unwrap(along - shear * centres, period=1.0)
    # Relative to the re-read shear, in column steps along each row (as numbering reads them).
    columns = [coords[m, 0] - (shear - prior) * coords[m, 1] for m in members]
    moved = _align_row_ends(shifts, columns, centres=centres, shear=shear)
    if np.any(moved != shifts):
        # Whole columns moved between rows: the shear that lined the offsets up was an alias (on 3-5
        # rows one can reach the search limit). The rows' own offsets give the drift again.
        offsets = moved + shear * centres
        drift = float(np.polyfit(centres, offsets, 1)[0])
        log.info("rows' whole-column offsets set by their first and last marks; shear %.3f read again as %.3f",
                 shear, drift)
        fit = replace(fit, row_step=fit.row_step + (drift - shear) * fit.col_step)
        shear, shifts = drift, offsets - drift * centres
    else:
        shifts = moved
    shifts -= np.rint(np.median(shifts))
    steps = np.diff(centres)
    spacing = float(np.median(steps))
    # A gap of about twice the usual spacing is a row with no marks: it keeps its number. Single
    # gaps of real acquisitions reach 1.5 times the median (tile_a), hence the higher bar.
    rows_per_step = np.maximum(1, np.floor(steps / spacing + 2.0 - MISSING_ROW_GAP)).astype(np.int64)
    if rows is not None and centres.size == rows:
        # A row of marks for every row of the grid: a wide gap is only a wide gap. Among 3-5 rows
        # 0.65-0.75 of the usual gap apart, one 1.25 apart passes for two.
        rows_per_step[:] = 1
    numbers = np.concatenate([[0], np.cumsum(rows_per_step)])
    every = np.arange(numbers[-1] + 1)
    return fit, RowLines(first=int(np.rint(centres[0])), coords=np.interp(every, numbers, centres),
                         shifts=np.interp(every, numbers, shifts))


def _align_row_ends(
    shifts: np.ndarray, columns: list[np.ndarray], *, centres: np.ndarray | None = None, shear: float = 0.0
) -> np.ndarray:
    """``shifts`` (each row's offset along itself, in column steps) with whole columns added where
    that makes the rows' marks (``columns``, their coordinates along each row) span fewer columns.

    Unwrapping takes each row's whole-column offset from its neighbour's, which holds only while the
    drift between rows is read right: on 3-5 unevenly spaced rows the offsets line up about as well
    under a wrong drift, and whole rows took their neighbours' column numbers. The rows of one grid
    start and end in the same columns, so the narrowest block of columns that every row fits in,
    each moved by at most ``ROW_END_REACH`` columns and all by as few as possible, decides. A row
    missing an edge mark fits that block unmoved and keeps its offset; where two ways of moving
    fit equally well the marks cannot tell, and nothing moves.
    """
    index = [_trimmed(np.rint(cols - shifts[k]).astype(np.int64)) for k, cols in enumerate(columns)]
    rows = [k for k in range(len(index)) if index[k].size]
    if len(rows) < 3:
        return shifts
    lo = np.array([int(index[k].min()) for k in rows])
    hi = np.array([int(index[k].max()) for k in rows])
    held = np.array([index[k].size for k in rows])
    ends_count = not np.any(held < ROW_END_FILL * (hi - lo + 1))
    if centres is not None and len(rows) <= FEW_ROWS:
        return _align_few_rows(shifts, rows, lo, hi, ends_count=ends_count, centres=centres[rows], shear=shear)
    if not ends_count:
        return shifts  # a row with many gaps: its ends may be debris, or marks missing
    reach = ROW_END_REACH
    for width in range(int((hi - lo).max()) + 1, int(hi.max() - lo.min()) + 1):
        found: dict[tuple[int, ...], int] = {}
        for left in range(int(lo.min()) - reach, int(lo.max()) + reach + 1):
            # The steps that put each row inside columns left .. left + width - 1; the smallest one.
            low = np.maximum(left - lo, -reach)
            high = np.minimum(left + width - 1 - hi, reach)
            if np.any(low > high):
                continue
            steps = tuple(int(v) for v in np.clip(0, low, high))
            found[steps] = sum(abs(v) for v in steps)
        if not found:
            continue
        fewest = min(found.values())
        best = [steps for steps, cost in found.items() if cost == fewest]
        if len(best) > 1:
            return shifts
        moved = shifts.copy()
        for k, step in zip(rows, best[0], strict=True):
            moved[k] = shifts[k] - step  # moving a row by ``step`` raises its marks' numbers by it
        if centres is not None and _off_drift(moved[rows], centres[rows], shear)[0][0] > SLIDE_LIMIT >= _off_drift(
                shifts[rows], centres[rows], shear)[0][0]:
            # The rows lay on one drift and the move takes a row a column off it: its ends were a
            # missing mark and debris beside the row's other end, not the row a column off.
            return shifts
        return moved
    return shifts


def _off_drift(shifts: np.ndarray, centres: np.ndarray, shear: float) -> tuple[np.ndarray, np.ndarray]:
    """For each way of setting the rows' offsets (each row of ``shifts``, in column steps; one way may
    be given as a 1-D array): how far they lie off the straight drift that fits them best, and that
    drift's size (columns per row step)."""
    offsets = np.atleast_2d(shifts) + shear * centres
    design = np.column_stack([np.ones(centres.size), centres])
    solution, *_ = np.linalg.lstsq(design, offsets.T, rcond=None)
    return np.abs(offsets - (design @ solution).T).max(axis=1), np.abs(solution[1])


def _align_few_rows(shifts: np.ndarray, rows: list[int], lo: np.ndarray, hi: np.ndarray, *, ends_count: bool,
                    centres: np.ndarray, shear: float) -> np.ndarray:
    """:func:`_align_row_ends` for a few rows (at most ``FEW_ROWS``; ``lo`` and ``hi`` their first and
    last columns, ``centres`` their places across), where the rows' ends alone mislead: a row missing
    its first mark fits the others' block unmoved as well as one missing its last mark, and debris
    beside a row's first node with its last mark missing reads as the whole row a column off. Every
    way of moving the rows by up to ``ROW_END_REACH`` columns is tried; a way counts only where the
    rows' offsets then lie on one straight drift, each within ``SLIDE_LIMIT`` of a column of it (a
    row slides along itself by a fraction of a column; a row moved a whole column the wrong way sits
    far off the line). Of those, the narrowest block of columns wins (where ``ends_count``: every row
    fills at least ``ROW_END_FILL`` of its span), then the smallest drift between rows, then the
    fewest columns moved. Where no way counts, nothing moves.
    """
    reach = ROW_END_REACH
    steps = np.array(np.meshgrid(*([np.arange(-reach, reach + 1)] * len(rows)), indexing="ij")).reshape(len(rows), -1).T
    off_line, drift = _off_drift(shifts[rows][None, :] - steps, centres, shear)
    width = (hi[None, :] + steps).max(axis=1) - (lo[None, :] + steps).min(axis=1) + 1
    plausible = off_line <= SLIDE_LIMIT
    if not plausible.any():
        return shifts
    order = np.lexsort((np.abs(steps).sum(axis=1), np.round(drift, 6), width if ends_count else np.zeros_like(width)))
    best = steps[order[plausible[order]][0]]
    moved = shifts.copy()
    for k, step in zip(rows, best, strict=True):
        moved[k] = shifts[k] - step  # moving a row by ``step`` raises its marks' numbers by it
    return moved


def _trimmed(index: np.ndarray) -> np.ndarray:
    """A row's column numbers without those set apart from the rest by two or more empty columns
    at either end: debris beyond the grid that passed for a mark, which would otherwise widen
    the row and move the others to match it."""
    index = np.unique(index)
    while index.size > 1 and index[1] - index[0] > GAP_AT_END:
        index = index[1:]
    while index.size > 1 and index[-1] - index[-2] > GAP_AT_END:
        index = index[:-1]
    return index


def _row_drift(along: np.ndarray, centres: np.ndarray, *, prior: float) -> float:
    """The shear (column pitches per row step) that best lines up the rows' offsets ``along`` the
    column step (fractions of a column) at row coordinates ``centres``: the one under which the
    offsets are most coherent on the circle. ``prior`` (the regular fit's shear) is kept unless
    another is clearly better, so that regular and few-row grids keep their fit."""

    def coherence(shear: np.ndarray) -> np.ndarray:
        phase = 2j * np.pi * (along[None, :] - shear[:, None] * centres[None, :])
        return np.abs(np.mean(np.exp(phase), axis=1))

    candidates = np.arange(-SHEAR_SEARCH, SHEAR_SEARCH + SHEAR_STEP / 2, SHEAR_STEP)
    scores = coherence(candidates)
    best = int(np.argmax(scores))
    if scores[best] <= float(coherence(np.array([prior]))[0]) + SHEAR_MARGIN:
        return prior
    return float(candidates[best])


def _row_peaks(across: np.ndarray, *, spread: float, min_gap: float) -> np.ndarray:
    """Where rows lie across the grid (pixels, increasing): peaks of the marks' density.

    A density, not gaps between sorted values, so that the few points between two close rows
    (marks the segmentation joined across them) cannot chain the rows into one. A peak must hold
    a good share of a typical row's marks and stand ``min_gap`` from a higher one.
    """
    step = spread / 4.0
    low = float(across.min()) - 4 * spread
    bins = int(np.ceil((float(across.max()) + 4 * spread - low) / step)) + 1
    counts = np.bincount(((across - low) / step).astype(np.int64), minlength=bins).astype(float)
    density = gaussian_filter1d(counts, sigma=4.0, mode="constant")
    found, props = find_peaks(density, height=0.0, distance=max(1, int(min_gap / step)))
    if found.size == 0:
        return found.astype(float)
    heights = props["peak_heights"]
    # A full row's height: the median of the peaks at least half the tallest, so that many small
    # peaks (debris between the rows, outnumbering them) do not drag it down.
    typical = float(np.median(heights[heights >= heights.max() / 2]))
    keep = heights >= MIN_ROW_FRACTION * typical
    return low + found[keep] * step


def _one_per_mark(points: np.ndarray, area: np.ndarray, *, within: float, typical_area: float) -> np.ndarray:
    """Which points to keep: the larger of any two closer than ``within`` goes first and wins,
    unless the two are too large together to be one mark cut in pieces (two marks of close rows)."""
    tree = cKDTree(points)
    keep = np.zeros(len(points), bool)
    taken = np.zeros(len(points), bool)
    for i in np.argsort(-area, kind="stable"):
        if taken[i]:
            continue
        keep[i] = True
        near = np.asarray(tree.query_ball_point(points[i], within), np.int64)
        own = (area[near] >= OWN_MARK_AREA * typical_area) & (area[i] + area[near] > PAIR_AREA * typical_area)
        taken[near[~own]] = True
    return keep


def _circular_offset(columns: np.ndarray) -> float:
    """How far a row's marks sit from whole column numbers, in (-0.5, 0.5]: the mean of their
    fractional parts taken on a circle, so marks on both sides of a half-column do not cancel."""
    angle = np.angle(np.mean(np.exp(2j * np.pi * np.asarray(columns, float))))
    return float(angle / (2 * np.pi))
