"""Register a stitched mask to the acquisition grid: from pixels to numbered ablation marks.

This module runs the steps in order and packs the result; each step lives in its own module:
:mod:`~am.register.marks` (components, their centres and points on them), :mod:`~am.register.fit` (the
affine lattice), :mod:`~am.register.split` (components covering several nodes) and
:mod:`~am.register.grid` (which nodes form the grid, which mark gets which id)::

    reg = register_mask(mask, rows=100, cols=100)
    reg.ids            # uint16, mask's size: 0 = background, else row * cols + col + 1
    reg.table["id"]    # one record per numbered mark: id, row, col, x, y, area_px
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from am.errors import InputError, RegistrationError
from am.grid_shape import MAX_NODES, SPLIT_LARGE_GRIDS, grid_shape_error
from am.register import grid
from am.register.fit import ASSIGN_TOLERANCE, MIN_MARKS, LatticeFit, fit_lattice, refit
from am.register.marks import MIN_AREA_FRACTION, Components, find_components, typical_mark_area
from am.register.pieces import MIN_OCCUPANCY, MIN_PAIRED_FRACTION, OCCUPANCY_GAIN, join_pieces, node_occupancy
from am.register.rows import LOOSE_RESIDUAL, OFF_NODE_MAX, SHEAR_SEARCH, SHEAR_STEP, fit_uneven_rows
from am.register.split import OVERSIZE_AREA, SplitComponent, split_oversized
from am.synth.lattice import Lattice

log = logging.getLogger(__name__)

# ... or within this many times that when the image edge cuts it: only a sliver of such a mark
# shows, and its point sits off the node by up to half the mark (still under half the pitch).
EDGE_REACH = 1.4
# A node this far (fraction of the pitch) beyond the image edge shows nothing of its mark, which
# explains an empty edge row; one nearer would show part of it (the corners of a turned grid's
# extra row graze the edge at either end, by a fraction of a pixel, and must not decide).
HIDDEN_BEYOND_EDGE = 0.3
# The joined pieces' regular lattice replaces uneven rows fitted to the pieces when it holds marks
# on this many times the share of its nodes (and fits tightly): see _joined_fit_wins.
UNEVEN_OCCUPANCY_GAIN = 1.1
# Where evenly spaced rows of the joined pieces lose to the pieces' lattice, rows placed where the
# joined pieces are may leave this share of them off their nodes (rows.OFF_NODE_MAX otherwise):
# each mark whose lobes did not pair leaves a lobe 0.3-0.45 of the pitch off its node (crop2's
# bf16 mask: 6 of 40, 15 %, against 2 of 41 in fp32), and node occupancy (MIN_OCCUPANCY, OCCUPANCY_GAIN),
# not this cap, tells such rows from rows fitted to points scattered at random. With the 8 % cap,
# 80 mask pixels flipped at random on the rims of crop2's marks left 39 of 60 fp32 and 32 of 60 bf16
# masks on the 6 x 7 grid; without it, 58 and 60.
JOINED_OFF_NODE_MAX = 1.0
# Past this angle (degrees) the grid's rows could as well be its columns turned the other way.
AMBIGUOUS_ANGLE = 40.0
# Above this residual (fraction of the pitch) the lattice fits badly: distortion or a wrong pitch.
RESIDUAL_WARNING = 0.12
# Marks at least this fraction of the typical area fit the lattice; smaller ones are often pieces.
MAJOR_AREA = 0.5
# Marks this close to their node (fraction of the pitch) and this large (times the typical area) place the grid.
TYPICAL_RESIDUAL = 0.2
TYPICAL_AREA_RANGE = (0.4, 2.5)
# If fewer marks than this fraction lie near a node, the marks do not form a grid at all.
MIN_ON_LATTICE_FRACTION = 0.5
SHEAR_WARNING = 0.05
# Rows placed where the marks are see a row without marks only as a gap of 1.7 usual spacings or more.
UNEVEN_MISSING_ROW_NOTE = (
    "; or, as the rows are unevenly spaced, a row inside the grid has no marks and its gap looks like "
    "the others: if the ids are one row off from some row on, check the overlay"
)
# A component left without id that holds this many typical marks is a blob, fold or debris that may
# hide marks beneath it: a warning says so.
BLOB_WARNING_AREA = 4.0

TABLE_DTYPE = np.dtype(
    [("id", np.int64), ("row", np.int64), ("col", np.int64), ("x", np.float64), ("y", np.float64),
     ("area_px", np.int64)]
)


@dataclass(frozen=True, eq=False)
class Registration:
    """The numbered marks of one image and how the grid was fitted.

    ``table`` is a structured array (``TABLE_DTYPE``) sorted by id; x, y is a point on the
    mark (its pixel nearest the centroid of its pixels; the centroid itself where that is on the
    mark). ``origin_x/y`` is node (0, 0) of the grid, where the marks' centroids sit, which for
    crescents and "C"s is off the ablation centre by a constant offset. ``unassigned_xy`` holds
    the points on the marks that got no id (off-lattice debris, duplicates), for the overlay.
    """

    ids: np.ndarray
    table: np.ndarray
    rows: int
    cols: int
    estimated_shape: bool
    angle_deg: float
    pitch_x: float
    pitch_y: float
    origin_x: float
    origin_y: float
    shear: float
    residual_px: float
    tolerance_px: float
    found: int
    assigned: int
    fragments: int
    duplicates: int
    off_lattice: int
    empty_nodes: int
    empty_node_ids: np.ndarray
    unassigned_xy: np.ndarray
    warnings: list[str] = field(default_factory=list)
    row_positions_px: np.ndarray | None = None
    row_shifts_px: np.ndarray | None = None

    @property
    def lattice(self) -> Lattice:
        """The fitted grid as a :class:`Lattice`, whose ``nodes()`` are in id order.

        Where the rows were found unevenly spaced, each row sits where its marks are: moved along
        the row step to ``row_positions_px`` and along the columns by ``row_shifts_px``.
        """
        row_across: tuple[float, ...] = ()
        row_along: tuple[float, ...] = ()
        if self.row_positions_px is not None and self.row_shifts_px is not None:
            # A move along the row step is also a move along the columns where the grid is sheared.
            steps = self.row_positions_px / self.pitch_y - np.arange(self.rows)
            row_across = tuple((steps * self.pitch_y).tolist())
            row_along = tuple((self.row_shifts_px + steps * self.shear * self.pitch_x).tolist())
        return Lattice(
            rows=self.rows, cols=self.cols, pitch_x=self.pitch_x, pitch_y=self.pitch_y,
            angle_deg=self.angle_deg, origin_x=self.origin_x, origin_y=self.origin_y, shear=self.shear,
            row_across=row_across, row_along=row_along,
        )

    @property
    def uneven_rows(self) -> bool:
        """Whether the rows were placed where their marks are, being unevenly spaced."""
        return self.row_positions_px is not None

    def pitch_text(self) -> str:
        """The grid's spacing for a person: both pitches, or the column pitch and the range of row gaps."""
        if self.row_positions_px is None or self.rows < 2:
            return f"pitch {self.pitch_x:.2f} x {self.pitch_y:.2f} px"
        gaps = np.diff(self.row_positions_px)
        return f"columns {self.pitch_x:.2f} px apart, rows {gaps.min():.1f}-{gaps.max():.1f} px apart (uneven)"

    def to_json_dict(self) -> dict[str, Any]:
        """What registration.json holds: the fit, the counts and the warnings."""
        return {
            "rows": self.rows,
            "cols": self.cols,
            "estimated_shape": self.estimated_shape,
            "image_width": int(self.ids.shape[1]),
            "image_height": int(self.ids.shape[0]),
            "angle_deg": round(self.angle_deg, 5),
            "pitch_x": round(self.pitch_x, 4),
            "pitch_y": round(self.pitch_y, 4),
            "origin_x": round(self.origin_x, 3),
            "origin_y": round(self.origin_y, 3),
            "shear": round(self.shear, 6),
            "residual_px": round(self.residual_px, 4),
            "tolerance_px": round(self.tolerance_px, 3),
            "marks_found": self.found,
            "marks_assigned": self.assigned,
            "marks_off_lattice": self.off_lattice,
            "marks_duplicate": self.duplicates,
            "fragments_merged": self.fragments,
            "empty_nodes": self.empty_nodes,
            "empty_node_ids": [int(i) for i in self.empty_node_ids],
            "row_spacing": "regular" if self.row_positions_px is None else "uneven",
            "row_positions_px": _rounded(self.row_positions_px),
            "row_shifts_px": _rounded(self.row_shifts_px),
            "warnings": list(self.warnings),
        }


def register_mask(mask: np.ndarray, *, rows: int | None, cols: int | None, name: str = "") -> Registration:
    """Number the marks of a 2-D 0/255 mask by acquisition grid position.

    ``rows``/``cols`` are the grid's true shape; ``None`` estimates it from the marks (and says so
    in ``warnings``). ``name`` (``group g``) starts each warning logged, so that among several
    groups, or with INFO lines hidden, a warning still says which mask it is about. Raises
    InputError for a bad mask or shape, RegistrationError when the marks cannot be registered to
    such a grid. Memory: about 8 bytes per pixel on top of the mask.
    """
    problem = grid_shape_error(rows, cols)
    if problem:
        raise InputError(problem)
    warnings: list[str] = []
    comps = find_components(mask)
    if comps.label.size < MIN_MARKS:
        raise RegistrationError(_too_few_marks(comps, mask.shape))
    if rows is not None and cols is not None and rows * cols > 4 * comps.label.size + 16:
        raise RegistrationError(
            f"the grid was given {rows} x {cols} = {rows * cols} positions but the mask holds only "
            f"{comps.label.size} marks (connected components, before any joined marks are cut apart): check "
            "--rows/--cols"
        )
    fit, typical_area = _fit(comps, warnings, rows=rows, cols=cols)
    splits = split_oversized(comps, fit)
    marks = _MarkList.build(comps, splits)
    if splits:
        log.info("split %d component(s) spanning several nodes into %d marks", len(splits),
                 sum(s.area.size for s in splits.values()))
        fit = refit(fit, marks.points[_major(marks.area, comps.typical_area)])
    tolerance = ASSIGN_TOLERANCE * fit.pitch
    col, row, residual = fit.indices(marks.points)
    on = residual <= tolerance
    if np.count_nonzero(on) < MIN_ON_LATTICE_FRACTION * on.size:
        raise RegistrationError(
            f"only {np.count_nonzero(on)} of {on.size} marks lie near the nodes of the best-fitting lattice "
            f"(pitch {fit.pitch_x:.1f} x {fit.pitch_y:.1f} px): the marks do not form a regular grid; check the mask"
        )
    edge = _touches_edge(comps.bbox[marks.source], mask.shape)
    typical = _typical(residual, marks.area, on & ~edge, pitch=fit.pitch, typical_area=typical_area) | (
        on & edge & (marks.area >= grid.MIN_NUMBERED_AREA * typical_area)
    )
    col_place, row_place = _place_or_explain(
        col[typical], row[typical], fit, rows=rows, cols=cols, shape=mask.shape, clipped=edge[typical],
        warnings=warnings,
    )
    assignment = grid.assign_nodes(
        col, row, residual=residual, area=marks.area, tolerance=tolerance,
        reach=np.where(edge, EDGE_REACH * tolerance, tolerance),
        typical_area=typical_area, cols=col_place, rows=row_place,
    )
    n_rows, n_cols = row_place.size, col_place.size
    if n_rows * n_cols > MAX_NODES:
        raise RegistrationError(
            f"the marks form a {n_rows} x {n_cols} grid, more than {MAX_NODES} positions, the most a 16-bit id "
            f"image holds; {SPLIT_LARGE_GRIDS}"
        )
    blob = _blob_warning(marks, assignment, splits, typical_area=typical_area)
    if blob:
        warnings.append(blob)
    ids = _paint_ids(comps, splits, marks, assignment.node_id)
    registration = _result(ids, marks, assignment, fit=fit, cols=col_place, rows=row_place, tolerance=tolerance,
                           residual=residual, typical_area=typical_area, warnings=warnings)
    for warning in registration.warnings:
        log.warning("%s%s", f"{name}: " if name else "", warning)
    return registration


def _result(
    ids: np.ndarray, marks: _MarkList, assignment: grid.Assignment, *, fit: LatticeFit, cols: grid.AxisPlacement,
    rows: grid.AxisPlacement, tolerance: float, residual: np.ndarray, typical_area: float, warnings: list[str],
) -> Registration:
    """Pack the numbering and the fit (renumbered so that node (0, 0) is the grid's) and say what is odd."""
    grid_fit = fit.moved_to(cols.start, rows.start)
    table = _table(marks, assignment, cols=cols.size)
    status = assignment.status
    empty = np.setdiff1d(np.arange(1, rows.size * cols.size + 1), table["id"])
    # How well the lattice fits: edge slivers, numbered though their points sit off the node, would
    # only blur that.
    fitting = (status == grid.ASSIGNED) & (residual <= tolerance)
    residual_px = float(np.sqrt(np.mean(residual[fitting] ** 2))) if fitting.any() else 0.0
    estimated = rows.estimated or cols.estimated
    if estimated:
        warnings.insert(0, f"rows and cols were not both given: estimated a {rows.size} x {cols.size} grid "
                           "from the marks")
    row_positions = row_shifts = None
    if grid_fit.rows is not None:
        row_positions = grid_fit.rows.coord(np.arange(rows.size)) * grid_fit.pitch_y
        row_shifts = grid_fit.rows.shift(np.arange(rows.size)) * grid_fit.pitch_x
        steps = np.diff(row_positions)
        warnings.append(
            f"the rows are unevenly spaced ({steps.min():.1f} to {steps.max():.1f} px apart, columns "
            f"{grid_fit.pitch_x:.1f} px): each row was placed where its marks are; check the overlay"
        )
    if residual_px > RESIDUAL_WARNING * fit.pitch:
        warnings.append(
            f"the lattice fits loosely (residual {residual_px:.2f} px for a {fit.pitch:.1f} px pitch): "
            "the image may be distorted; check the overlay"
        )
    if grid_fit.rows is not None and abs(grid_fit.shear) >= SHEAR_SEARCH - SHEAR_STEP:
        # A drift at the search limit is where a wrong one lined the rows' offsets up best.
        warnings.append(
            f"the rows' drift along themselves was fitted at the limit of its search ({grid_fit.shear:.3f} column "
            "pitches per row): the ids of some rows may be a column off; check the overlay"
        )
    elif abs(grid_fit.shear) > SHEAR_WARNING:
        warnings.append(f"the grid is sheared by {grid_fit.shear:.3f} column pitches per row; check the overlay")
    if abs(grid_fit.angle_deg) > AMBIGUOUS_ANGLE:
        warnings.append(
            f"the grid is turned by {grid_fit.angle_deg:.1f} degrees, close to 45: ids follow the grid as imaged, "
            "turned by at most 45 degrees, so its rows could as well be read as columns; check the overlay"
        )
    oversized = _oversized_ids(marks, assignment, typical_area=typical_area)
    if len(oversized):
        warnings.append(_oversized_warning(oversized, typical_area=typical_area))
    registration = Registration(
        ids=ids,
        table=table,
        rows=rows.size,
        cols=cols.size,
        estimated_shape=estimated,
        angle_deg=grid_fit.angle_deg,
        pitch_x=grid_fit.pitch_x,
        pitch_y=grid_fit.pitch_y,
        origin_x=float(grid_fit.origin[0]),
        origin_y=float(grid_fit.origin[1]),
        shear=grid_fit.shear,
        residual_px=residual_px,
        tolerance_px=tolerance,
        found=int(marks.area.size),
        assigned=int(table.size),
        fragments=int(np.count_nonzero(status == grid.FRAGMENT)),
        duplicates=int(np.count_nonzero(status == grid.DUPLICATE)),
        off_lattice=int(np.count_nonzero(status == grid.OFF_LATTICE)),
        empty_nodes=int(empty.size),
        empty_node_ids=empty,
        unassigned_xy=marks.mark_points[(status == grid.DUPLICATE) | (status == grid.OFF_LATTICE)],
        warnings=warnings,
        row_positions_px=row_positions,
        row_shifts_px=row_shifts,
    )
    log.info(
        "registered %d of %d marks to a %d x %d grid (angle %.3f deg, pitch %.2f x %.2f px, residual %.2f px)",
        registration.assigned, registration.found, rows.size, cols.size, registration.angle_deg,
        registration.pitch_x, registration.pitch_y, residual_px,
    )
    return registration


def _too_few_marks(comps: Components, shape: tuple[int, ...]) -> str:
    """Why fewer marks than a grid needs were found, pointing at what to check."""
    size = f"the {shape[1]} x {shape[0]} px mask"
    found = comps.n_labels - 1
    if found == 0:
        return (f"{size} is empty: no mark to register; check that the image shows the ablation marks (a blank "
                "or constant image has none) and, where they are far larger or smaller than the model's, rerun "
                "python -m am.pipeline with --scale")
    if found == 1:
        return (f"{size} is one connected region of {int(np.count_nonzero(comps.labels))} px, not separate marks: "
                "check the segmentation")
    message = f"found {comps.label.size} mark(s) in {size}; at least {MIN_MARKS} are needed to fit a grid"
    reasons = []
    if comps.thin:
        reasons.append((comps.thin, "as thinner than 2 px (lines or specks no 2 x 2 px square fits in)"))
    small = comps.dropped - comps.thin
    if small:
        reason = f"as debris, being under {comps.min_area} px"
        if comps.typical_area > 0 and comps.area.size:
            # Only a large component kept can have set the typical area above the marks'.
            reason += (f" ({MIN_AREA_FRACTION:.2f} of the typical mark area, taken as {comps.typical_area:.0f} px "
                       f"from the largest components; the largest holds {int(comps.area.max())} px: is it a blob "
                       "or fold much larger than the marks?)")
        else:
            reason += ", the least a mark may hold"
        reasons.append((small, reason))
    if len(reasons) == 1:
        message += f": {reasons[0][0]} of its {found} components were left out {reasons[0][1]}"
    elif reasons:
        message += (f": {comps.dropped} of its {found} components were left out, "
                    + ", ".join(f"{count} {reason}" for count, reason in reasons))
    return message + "; check the segmentation"


def _oversized_ids(marks: _MarkList, assignment: grid.Assignment, *, typical_area: float) -> np.ndarray:
    """Ids and areas (a (N, 2) array, by id) of numbered marks left whole though nearly as large
    as two: joined marks the split step could not cut apart, because both lie on one node of the
    fitted grid."""
    whole = (assignment.status == grid.ASSIGNED) & (marks.part < 0)
    large = whole & (marks.area >= OVERSIZE_AREA * typical_area)
    found = np.column_stack([assignment.node_id[large], marks.area[large]]).astype(np.int64)
    return found[np.argsort(found[:, 0])]


def _blob_warning(
    marks: _MarkList, assignment: grid.Assignment, splits: dict[int, SplitComponent], *, typical_area: float
) -> str | None:
    """What the user should look at where the mask holds something far larger than a mark that got
    no id: a blob, fold or debris, which may hide marks (None when there is none)."""
    whole = (assignment.status != grid.ASSIGNED) & (marks.part < 0)
    sizes = [int(a) for a in marks.area[whole & (marks.area >= BLOB_WARNING_AREA * typical_area)]]
    sizes += [piece.unclaimed_px for piece in splits.values()
              if piece.unclaimed_px >= BLOB_WARNING_AREA * typical_area]
    if not sizes:
        return None
    return (f"{len(sizes)} region(s) of the mask without id hold {BLOB_WARNING_AREA:g} or more typical marks "
            f"({typical_area:.0f} px; the largest {max(sizes)} px): a blob, fold or debris that may hide marks; "
            "check the overlay")


def _oversized_warning(oversized: np.ndarray, *, typical_area: float) -> str:
    """Names the ids and says how large they are: "about twice" read as false where a mark was 1.6 times."""
    ids, ratios = oversized[:, 0], oversized[:, 1] / max(typical_area, 1.0)
    shown = ", ".join(str(int(i)) for i in ids[:20]) + (f" and {ids.size - 20} more" if ids.size > 20 else "")
    noun, verb = ("id", "is") if ids.size == 1 else ("ids", "are")
    size = (f"{ratios[0]:.1f} times" if ids.size == 1 else f"{ratios.min():.1f} to {ratios.max():.1f} times"
            if np.ptp(ratios) >= 0.05 else f"{ratios.mean():.1f} times each")
    return (f"{noun} {shown} {verb} {size} a typical mark ({typical_area:.0f} px): two marks may be joined in "
            "the mask; check the overlay")


def _rounded(values: np.ndarray | None) -> list[float] | None:
    return None if values is None else [round(float(v), 2) for v in values]


def _fit(
    comps: Components, warnings: list[str], *, rows: int | None = None, cols: int | None = None
) -> tuple[LatticeFit, float]:
    """The lattice of the marks, and the area of a typical mark as the lattice sees it (``rows`` and
    ``cols``, the grid's where given, tell uneven rows from a regular lattice where the marks alone cannot).

    Where many marks are drawn in two pieces, the lattice of the joined pieces replaces the
    lattice of the pieces (:mod:`am.register.pieces`), and a typical mark is a joined one.
    """
    major = _major(comps.area, comps.typical_area)
    points, area = comps.points[major], comps.area[major]
    fit_warnings: list[str] = []
    fit: LatticeFit | None = None
    try:
        fit = _fit_points(points, area, typical_area=comps.typical_area, warnings=fit_warnings, rows=rows,
                         cols=cols)
    except RegistrationError as exc:
        pieces_error = exc  # no lattice of the pieces: the joined pieces may still form one
    joined = join_pieces(points, area)
    if 2 * joined.pairs >= MIN_PAIRED_FRACTION * len(points) and len(joined.points) >= MIN_MARKS:
        joined_area = typical_mark_area(joined.area)
        before = 0.0 if fit is None else node_occupancy(fit, points)
        # The joined points' rows as the uneven model's own test takes them, then, where that kept
        # them evenly spaced and the lattice lost, without its cap on the marks left off their nodes:
        # node occupancy judges the joined lattice against the pieces' in its place.
        for off_node_max in (OFF_NODE_MAX, JOINED_OFF_NODE_MAX):
            joined_warnings: list[str] = []
            try:
                joined_fit = _fit_points(joined.points, joined.area, typical_area=joined_area,
                                         warnings=joined_warnings, off_node_max=off_node_max, rows=rows,
                                         cols=cols)
            except RegistrationError as exc:
                log.debug("no lattice fits the joined pieces (%s): the pieces' lattice stays", exc)
                break
            after = node_occupancy(joined_fit, points)
            if _joined_fit_wins(fit, joined_fit, joined.points, before=before, after=after):
                log.info("%d pair(s) of components look like two pieces of one mark: the lattice is fitted to the "
                         "pairs joined (marks on %.0f %% of its nodes, against %.0f %% for the pieces)",
                         joined.pairs, 100 * min(after, 1.0), 100 * min(before, 1.0))
                warnings.extend(joined_warnings)
                return joined_fit, joined_area
            if joined_fit.rows is not None:
                break  # already uneven: a looser test gives the same rows
    if fit is None:
        raise pieces_error
    warnings.extend(fit_warnings)
    return fit, comps.typical_area


def _joined_fit_wins(
    fit: LatticeFit | None, joined_fit: LatticeFit, joined: np.ndarray, *, before: float, after: float
) -> bool:
    """Whether the lattice of the ``joined`` pieces replaces that of the pieces: it holds marks on
    clearly more of its nodes; or, where the pieces' rows were placed unevenly, on more of them
    (by ``UNEVEN_OCCUPANCY_GAIN``: rows placed where the pieces are hold pieces by construction)
    with the joined pieces on evenly spaced rows, tightly (as tightly as rows never tried uneven).
    Halves of crescents cut at random angles have centroids up to 0.3 of the pitch apart across the
    rows; uneven rows fitted to them cut rows in two (55 rows for 50, 81 % of the nodes held), while
    the joined halves, whole crescents, fit a regular lattice on 95 % of its nodes, 0.07 pitch off.
    Two rows 0.45 of the pitch apart join into one row on as many nodes: they stay two rows."""
    if after < MIN_OCCUPANCY:
        return False
    if after >= OCCUPANCY_GAIN * before:
        return True
    if fit is None or fit.rows is None or joined_fit.rows is not None or after < UNEVEN_OCCUPANCY_GAIN * before:
        return False
    _, _, residual = joined_fit.indices(joined)
    return float(np.sqrt(np.mean(residual**2))) <= LOOSE_RESIDUAL * joined_fit.pitch


def _fit_points(
    points: np.ndarray, area: np.ndarray, *, typical_area: float, warnings: list[str],
    off_node_max: float = OFF_NODE_MAX, rows: int | None = None, cols: int | None = None,
) -> LatticeFit:
    """A regular lattice, or one with its rows where the marks are where that explains them better."""
    fit = fit_lattice(points, warnings=warnings)
    return fit_uneven_rows(fit, points, area, typical_area=typical_area, off_node_max=off_node_max, rows=rows,
                           cols=cols) or fit


def _major(area: np.ndarray, typical_area: float) -> np.ndarray:
    """Marks large enough to fit the lattice with: pieces of a mark split by segmentation sit off its
    node and, in numbers, would make the piece-to-piece distance look like the pitch.
    """
    major = area >= MAJOR_AREA * typical_area
    return major if np.count_nonzero(major) >= max(MIN_MARKS, 0.3 * area.size) else np.ones(area.size, bool)


def _typical(
    residual: np.ndarray, area: np.ndarray, on: np.ndarray, *, pitch: float, typical_area: float
) -> np.ndarray:
    """Marks that look like marks: close to their node and of about the usual size.

    Only these (and marks cut by the image edge, which cannot look typical) decide where the grid
    lies, so that debris which happens to sit near a node beyond the grid cannot add a row; every
    on-lattice mark inside the grid still gets an id.
    """
    if not on.any():
        return on
    close = max(TYPICAL_RESIDUAL * pitch, 2.5 * float(np.median(residual[on])))
    low, high = TYPICAL_AREA_RANGE
    return on & (residual <= close) & (area >= low * typical_area) & (area <= high * typical_area)


def _touches_edge(bbox: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Whether each (x, y, w, h) box touches the image border."""
    height, width = shape[:2]
    x, y, w, h = bbox.T
    return (x <= 0) | (y <= 0) | (x + w >= width) | (y + h >= height)


def _place_or_explain(
    col: np.ndarray, row: np.ndarray, fit: LatticeFit, *, rows: int | None, cols: int | None,
    shape: tuple[int, ...], clipped: np.ndarray, warnings: list[str],
) -> tuple[grid.AxisPlacement, grid.AxisPlacement]:
    """:func:`_place`, and where the given grid does not fit but the same grid turned by 90 degrees
    fits the marks whole, an error that says so: ids follow the grid as imaged, turned by at most 45
    degrees. A turned grid that fits only with empty edge rows or columns is no better explanation
    than a mistyped count, so it is not offered."""
    try:
        return _place(col, row, fit, rows=rows, cols=cols, shape=shape, clipped=clipped, warnings=warnings)
    except RegistrationError as exc:
        if rows is None or cols is None or rows == cols:
            raise
        turned: list[str] = []
        try:
            _place(col, row, fit, rows=cols, cols=rows, shape=shape, clipped=clipped, warnings=turned)
        except RegistrationError:
            raise exc from None
        if any("marks fill only" in w or "have no marks at all" in w for w in turned):
            raise
        raise RegistrationError(
            f"{exc}. The marks do fit a {cols} x {rows} grid as imaged (rows run across the image, turned by at "
            f"most 45 degrees; here {fit.angle_deg:.1f}): if the acquisition was imaged turned by about 90 degrees, "
            f"or rows and columns were swapped, give --rows {cols} --cols {rows}"
        ) from exc


def _mostly(flag: np.ndarray, among: np.ndarray) -> bool:
    """Whether more than half of the marks ``among`` are flagged."""
    return 2 * int(np.count_nonzero(flag & among)) > int(np.count_nonzero(among))


def _place(
    col: np.ndarray, row: np.ndarray, fit: LatticeFit, *, rows: int | None, cols: int | None,
    shape: tuple[int, ...], clipped: np.ndarray, warnings: list[str],
) -> tuple[grid.AxisPlacement, grid.AxisPlacement]:
    """Place columns, then rows, on the lattice; ties go to placements whose nodes all stay inside the
    image, or near enough to its edge to show part of a mark. ``clipped`` flags the marks cut by the
    image border: a lattice row of mostly such marks runs along the border, where a sparse row is expected."""
    height, width = shape[:2]
    nodes = np.unique(np.column_stack([col, row]), axis=0)
    if nodes.size == 0:
        raise RegistrationError("no mark lies on the fitted lattice: check the mask")
    row_range = (int(nodes[:, 1].min()), int(nodes[:, 1].max()))

    beyond = HIDDEN_BEYOND_EDGE * fit.pitch

    def outside(c: np.ndarray, r: np.ndarray) -> int:
        cc, rr = np.meshgrid(c, r)
        x, y = fit.positions(cc.ravel(), rr.ravel()).T
        return int(np.count_nonzero((x < -beyond) | (x >= width + beyond) | (y < -beyond) | (y >= height + beyond)))

    # Columns are counted over the filled rows only, rows over the columns of the grid: on a grid 2-3
    # marks across, debris near the nodes of rows beyond it counted as much as a column's only mark,
    # and decided which edge column was left out.
    first_row, last_row = grid.filled_span(nodes[:, 1])
    in_rows = (nodes[:, 1] >= first_row) & (nodes[:, 1] <= last_row)
    col_place = grid.place_axis(
        nodes[in_rows, 0], size=cols, name="column", warnings=warnings,
        outside_image=lambda s, n: outside(np.arange(s, s + n), np.arange(row_range[0], row_range[1] + 1)),
        at_image_edge=lambda i: _mostly(clipped, col == i),
    )
    placed_cols = np.arange(col_place.start, col_place.start + col_place.size)
    in_cols = (nodes[:, 0] >= col_place.start) & (nodes[:, 0] < col_place.start + col_place.size)
    row_place = grid.place_axis(
        nodes[in_cols, 1], size=rows, name="row", warnings=warnings,
        outside_image=lambda s, n: outside(placed_cols, np.arange(s, s + n)),
        ambiguity_note="" if fit.rows is None else UNEVEN_MISSING_ROW_NOTE,
        at_image_edge=lambda i: _mostly(clipped, row == i),
    )
    return col_place, row_place


@dataclass(frozen=True)
class _MarkList:
    """Marks after splitting: whole components and the parts of split ones, as flat arrays.

    ``source`` is the component index in ``Components``; ``part`` is -1 for a whole component,
    else the part's number within its split component. ``x``, ``y`` are centres (fitted and
    numbered), ``mark_x``, ``mark_y`` points on the marks (reported).
    """

    source: np.ndarray
    part: np.ndarray
    x: np.ndarray
    y: np.ndarray
    mark_x: np.ndarray
    mark_y: np.ndarray
    area: np.ndarray

    @property
    def points(self) -> np.ndarray:
        return np.column_stack([self.x, self.y])

    @property
    def mark_points(self) -> np.ndarray:
        return np.column_stack([self.mark_x, self.mark_y])

    @classmethod
    def build(cls, comps: Components, splits: dict[int, SplitComponent]) -> _MarkList:
        whole = np.array([i for i in range(comps.label.size) if i not in splits], np.int64)
        source = [whole]
        part = [np.full(whole.size, -1, np.int64)]
        xs, ys, areas = [comps.x[whole]], [comps.y[whole]], [comps.area[whole]]
        mark_xs, mark_ys = [comps.mark_x[whole]], [comps.mark_y[whole]]
        for i, piece in splits.items():
            source.append(np.full(piece.area.size, i, np.int64))
            part.append(np.arange(piece.area.size, dtype=np.int64))
            xs.append(piece.x)
            ys.append(piece.y)
            mark_xs.append(piece.mark_x)
            mark_ys.append(piece.mark_y)
            areas.append(piece.area)
        return cls(
            source=np.concatenate(source), part=np.concatenate(part), x=np.concatenate(xs),
            y=np.concatenate(ys), mark_x=np.concatenate(mark_xs), mark_y=np.concatenate(mark_ys),
            area=np.concatenate(areas),
        )


def _paint_ids(
    comps: Components, splits: dict[int, SplitComponent], marks: _MarkList, node_id: np.ndarray
) -> np.ndarray:
    """The id image: a lookup table from component label to id, then the split components' parts."""
    lut = np.zeros(comps.n_labels, np.uint16)
    whole = marks.part < 0
    lut[comps.label[marks.source[whole]]] = node_id[whole].astype(np.uint16)
    ids = lut[comps.labels]  # fancy indexing: ten times faster than np.take here
    for i, piece in splits.items():
        mine = marks.source == i
        part_ids = np.zeros(piece.area.size + 1, np.uint16)
        part_ids[marks.part[mine] + 1] = node_id[mine].astype(np.uint16)
        h, w = piece.part_map.shape
        region = ids[piece.y0 : piece.y0 + h, piece.x0 : piece.x0 + w]
        inside = piece.part_map > 0
        region[inside] = part_ids[piece.part_map[inside]]
    return ids


def _table(marks: _MarkList, assignment: grid.Assignment, *, cols: int) -> np.ndarray:
    """One record per numbered node: the assigned mark's point, the area of it and its fragments."""
    primary = np.nonzero(assignment.status == grid.ASSIGNED)[0]
    node = assignment.node_id[primary]
    order = np.argsort(node)
    primary, node = primary[order], node[order]
    numbered = assignment.node_id > 0
    area_by_node = np.bincount(assignment.node_id[numbered], weights=marks.area[numbered],
                               minlength=int(node.max(initial=0)) + 1)
    table = np.zeros(primary.size, TABLE_DTYPE)
    table["id"] = node
    table["row"] = (node - 1) // cols
    table["col"] = (node - 1) % cols
    table["x"] = marks.mark_x[primary]
    table["y"] = marks.mark_y[primary]
    table["area_px"] = np.rint(area_by_node[node]).astype(np.int64)
    return table
