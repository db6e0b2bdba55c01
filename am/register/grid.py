"""Registration, step 3: place the acquisition grid on the fitted lattice and give marks their ids.

The fitted lattice has no natural row 0: its indices count from a seed mark. Along each axis this
module counts the occupied nodes per lattice row (column), then chooses the ``rows`` consecutive
lattice rows that hold the most marks. Ids therefore follow geometry, never the rank of a mark
among its neighbours, so a missing row, column or mark shifts no other id.

``rows``/``cols`` given are the truth: a grid a few rows larger than the marks is accepted with
a warning, but marks that clearly fill more lattice rows than requested, or far fewer, are an
error that says what was found. Without them the shape is the span of the well-filled rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from am.errors import RegistrationError

log = logging.getLogger(__name__)

# A lattice row counts as "filled" with at least this fraction of the median row's marks (and 2).
FILLED_FRACTION = 0.1
# Where a full row holds at most this many marks (a grid 2-3 marks across), one mark fills a row:
# with 2 marks a row, a column missing one mark held half a full one and was taken for debris, so
# the grid was moved a column past it and every id shifted.
FEW_PER_ROW = 3
# A lattice row outside the requested grid with this fraction of the median row's marks is a contradiction.
CONTRADICTION_FRACTION = 0.5
# How many more rows than the filled span a requested grid may have: max(2, 10 %).
EMPTY_EDGE_FRACTION = 0.1

ASSIGNED, FRAGMENT, DUPLICATE, OFF_LATTICE = 1, 2, 3, 4
# A second mark on a node joins the first as a fragment while their total stays below this many typical marks.
FRAGMENT_MAX_AREA = 1.5
# Weight of the area mismatch (log ratio) against the distance (in tolerances) when two marks want one node.
AREA_WEIGHT = 0.5
# A mark smaller than this fraction of a typical one gets an id only as a fragment of a mark on its
# node: alone it is a speck (a 6 px one at the image border took a node of an otherwise empty column).
MIN_NUMBERED_AREA = 0.05
# The command-line option that sets the grid's size along each axis, for messages.
_OPTION = {"row": "--rows", "column": "--cols"}


@dataclass(frozen=True)
class AxisPlacement:
    """Lattice index ``start`` becomes row (or column) 0; the grid has ``size`` of them."""

    start: int
    size: int
    estimated: bool


@dataclass(frozen=True)
class Assignment:
    """Per mark: its node id (0 = none) and status (ASSIGNED, FRAGMENT, DUPLICATE, OFF_LATTICE)."""

    node_id: np.ndarray
    status: np.ndarray


def place_axis(
    index: np.ndarray,
    *,
    size: int | None,
    name: str,
    outside_image: Callable[[int, int], int],
    warnings: list[str],
    ambiguity_note: str = "",
    at_image_edge: Callable[[int], bool] = lambda index: False,
) -> AxisPlacement:
    """Choose which lattice indices along one axis form the grid.

    ``index`` holds the axis index of every occupied node (one entry per node, not per mark);
    ``outside_image(start, size)`` counts the grid nodes a placement would put outside the image,
    which breaks ties when an edge row has no marks at all. ``ambiguity_note`` ends the warning
    given when that tie stays (what else the user should suspect). ``at_image_edge(index)`` says
    whether that lattice row holds marks cut by the image border, where others are hidden: a
    sparse edge row there is no sign of debris.
    """
    plural = f"{name}s"
    if index.size == 0:
        raise RegistrationError(f"no mark lies on the fitted lattice, so no {name} of the grid can be placed")
    lo = int(index.min())
    counts = np.bincount(index - lo)
    median = full_row_count(counts)
    well_filled = counts >= filled_count(median)
    if not well_filled.any():
        well_filled = counts > 0
    filled = np.nonzero(well_filled)[0]
    first, last = lo + int(filled[0]), lo + int(filled[-1])
    span = last - first + 1
    if size is None:
        log.info("estimated %d %s from the marks", span, plural)
        outside = np.ones(counts.size, bool)
        outside[first - lo : last - lo + 1] = False
        _warn_partial(counts, outside, median=median, name=name, size=span, warnings=warnings)
        _warn_sparse_edges(counts, lo=lo, start=first, size=span, median=median, name=name, given=False,
                           at_image_edge=at_image_edge, warnings=warnings)
        return AxisPlacement(start=first, size=span, estimated=True)

    allowance = max(2, int(EMPTY_EDGE_FRACTION * size))
    if span < size - allowance:
        raise RegistrationError(
            f"the marks fill only {span} lattice {plural} but the grid was given {size} {plural}; at most "
            f"{allowance} edge {plural} may be empty: check the number of {plural} (or the mask)"
        )
    chosen = _choose_start(counts, lo=lo, size=size, well_filled=well_filled, first=first, last=last,
                          outside_image=outside_image)
    start = chosen.start
    if span < size:
        _warn_empty_edge(start, chosen.by_image, first=first, span=span, size=size, name=name,
                         warnings=warnings, ambiguity_note=ambiguity_note)
    elif span > size and chosen.tied:
        left_out = [i for i in (first, last) if not start <= i < start + size]
        warnings.append(
            f"the marks fill {span} lattice {plural}, more than the {size} given, and more than one placement of "
            f"the grid holds as many marks; the edge {name} left out holds "
            f"{', '.join(str(int(counts[i - lo])) for i in left_out)} mark(s): if those are marks rather than "
            f"debris, ids are one {name} off; check {_OPTION[name]} and the overlay"
        )
    inside = np.zeros(counts.size, bool)
    inside[max(0, start - lo) : max(0, start - lo + size)] = True
    # Where a full lattice row holds a single mark (a grid one mark wide), that mark is the whole row.
    clear = max(2.0, CONTRADICTION_FRACTION * median) if median >= 2 else 1.0
    contradicting = np.nonzero(~inside & (counts >= clear))[0]
    if contradicting.size:
        raise RegistrationError(
            f"the marks fill {span} lattice {plural} but the grid was given {size} {plural}: "
            f"{contradicting.size} well-filled {name}(s) outside any {size} consecutive ones hold "
            f"{', '.join(str(int(counts[i])) for i in contradicting[:10])} marks (a full {name} holds about "
            f"{int(round(median))}); check the number of {plural}, or whether the mask holds more than one grid"
        )
    _warn_partial(counts, ~inside, median=median, name=name, size=size, warnings=warnings)
    _warn_sparse_edges(counts, lo=lo, start=start, size=size, median=median, name=name, given=True,
                       at_image_edge=at_image_edge, warnings=warnings)
    empty = size - int(np.count_nonzero(counts[inside]))
    if empty:
        warnings.append(f"{empty} of the {size} {plural} of the grid have no marks at all")
    return AxisPlacement(start=start, size=size, estimated=False)


def filled_count(median: float) -> float:
    """The fewest marks a lattice row must hold to count as filled, where a full row holds ``median``.

    Below it a row counts as empty: a piece or two of debris near its nodes must not decide where
    the grid lies. Where a full row holds only 2-3 marks, one is as much as a row with marks
    missing holds, so one suffices; the same bound decides which rows beyond the grid are partly
    filled or contradict it, so no row is filled for one test and empty for another.
    """
    return 1.0 if median <= FEW_PER_ROW else max(2.0, FILLED_FRACTION * median)


def filled_span(index: np.ndarray) -> tuple[int, int]:
    """The first and last lattice row (column) that counts as filled, from the axis index of every
    occupied node; ``index`` must not be empty."""
    lo = int(index.min())
    counts = np.bincount(index - lo)
    filled = np.nonzero(counts >= filled_count(full_row_count(counts)))[0]
    return lo + int(filled[0]), lo + int(filled[-1])


def full_row_count(counts: np.ndarray) -> float:
    """How many marks a full lattice row holds: the median of the rows holding at least half the most.

    Not the median of every row with a mark: where debris lies near the nodes of many lattice
    rows beyond the grid (a wide margin of debris-strewn tissue), those rows outnumber the grid's
    own, their two or three pieces became the "full" row, and the grid's neighbours then
    contradicted any grid size given.
    """
    occupied = counts[counts > 0]
    return float(np.median(occupied[occupied >= occupied.max() / 2]))


@dataclass(frozen=True)
class _Start:
    """The chosen first lattice row (column) of the grid; ``by_image`` when the image edge chose
    it among placements that hold the same marks."""

    start: int
    by_image: bool
    tied: bool = False


def _choose_start(
    counts: np.ndarray, *, lo: int, size: int, well_filled: np.ndarray, first: int, last: int,
    outside_image: Callable[[int, int], int],
) -> _Start:
    """The start of the ``size`` consecutive lattice rows holding the most marks of filled rows
    (``first`` .. ``last`` the outermost filled ones).

    A row with fewer marks than a filled one counts as empty, and the windows tried are those
    around the filled rows, not around every row with a point: a piece of debris near a node of an
    otherwise empty edge row would otherwise decide which edge of a grid larger than the marks is
    empty, and shift every id by a row without a word. Ties go to the placements that keep every
    node inside the image where others do not (where all reach out of it, as a turned grid's
    corners do, the image says nothing), then to the one starting at the first filled row.
    """
    starts = np.arange(min(first, last - size + 1), max(first, last - size + 1) + 1)
    scored = np.where(well_filled, counts, 0)
    padded = np.concatenate([np.zeros(size, np.int64), scored, np.zeros(size, np.int64)])
    cumulative = np.concatenate([[0], np.cumsum(padded)])
    offset = starts - lo + size
    scores = cumulative[offset + size] - cumulative[offset]
    best = starts[scores == scores.max()]
    by_image = False
    if best.size > 1:
        inside = np.array([outside_image(int(s), size) == 0 for s in best])
        by_image = bool(inside.any() and not inside.all())
        best = best[inside] if by_image else best
    if best.size > 1:
        return _Start(start=int(best[np.argmin(np.abs(best - first))]), by_image=False, tied=True)
    return _Start(start=int(best[0]), by_image=by_image)


def _warn_empty_edge(
    start: int, by_image: bool, *, first: int, span: int, size: int, name: str, warnings: list[str],
    ambiguity_note: str,
) -> None:
    """Say which edge row was left empty, when the grid is larger than the filled rows, and on what
    grounds: the marks cannot tell, so a wrong guess shifts every id by a row."""
    plural = f"{name}s"
    if by_image:
        side = "first" if start < first else "last"
        warnings.append(
            f"the grid has {size} {plural} but marks fill only {span}: the {side} {name} was left empty, as "
            f"the other edge would put nodes of the grid outside the image; if ids are one {name} off, check "
            f"{_OPTION[name]} and the overlay"
        )
    else:
        warnings.append(
            f"the grid has {size} {plural} but marks fill only {span}: which edge {name} is empty is "
            f"ambiguous; {name} 0 was put at the first {name} with marks{ambiguity_note}"
        )


def _warn_sparse_edges(
    counts: np.ndarray, *, lo: int, start: int, size: int, median: float, name: str, given: bool,
    at_image_edge: Callable[[int], bool], warnings: list[str],
) -> None:
    """Say so when an edge row of the grid holds far fewer marks than a full row, but some.

    Away from the image border, such a row may be a partly acquired one, or debris that happens
    to sit near the nodes of a lattice row beyond the marks; in the second case the grid took it
    in place of a true edge row (or added it) and every id is a row off. The marks cannot tell
    which; a person can.
    """
    if size < 2 or median < 2:
        return
    for side, index in (("first", start), ("last", start + size - 1)):
        held = int(counts[index - lo]) if 0 <= index - lo < counts.size else 0
        # Rows below the filled share count as empty already (other warnings say so).
        if not filled_count(median) <= held < CONTRADICTION_FRACTION * median or at_image_edge(index):
            continue
        if given:
            risk = f"ids are one {name} off; check {_OPTION[name]} and the overlay"
        else:
            risk = (f"the grid has a {name} too many" + (f" and ids are one {name} off" if side == "first" else "")
                    + f"; check the overlay, or give {_OPTION[name]}")
        warnings.append(f"the {side} {name} of the grid holds only {held} mark(s) where a full {name} holds about "
                        f"{int(round(median))}: if they are debris, {risk}")


def _warn_partial(
    counts: np.ndarray, outside: np.ndarray, *, median: float, name: str, size: int, warnings: list[str]
) -> None:
    """Say so when lattice rows beyond the grid hold more than stray debris (a partial row)."""
    partial = outside & (counts >= filled_count(median))
    if partial.any():
        warnings.append(
            f"{int(counts[partial].sum())} mark(s) on {int(partial.sum())} partly filled lattice {name}(s) "
            f"beyond the {size}-{name} grid were left without id"
        )


def assign_nodes(
    col: np.ndarray,
    row: np.ndarray,
    *,
    residual: np.ndarray,
    area: np.ndarray,
    tolerance: float,
    reach: np.ndarray | None = None,
    typical_area: float,
    cols: AxisPlacement,
    rows: AxisPlacement,
) -> Assignment:
    """Give each mark the id of its node, or none; resolve two marks on one node.

    A mark farther than ``tolerance`` px from its node (or its own ``reach``, where given: marks
    cut by the image edge sit farther off), or whose node is outside the grid, is off-lattice.
    When marks share a node the better match (near the node, typical size) keeps it; a small
    second piece joins it as a fragment of the same mark (a mark split by segmentation), anything
    larger is a duplicate and gets no id. A speck (under ``MIN_NUMBERED_AREA`` of a typical mark)
    is numbered only as such a fragment.
    """
    n = col.size
    grid_col = col - cols.start
    grid_row = row - rows.start
    reach = np.full(n, tolerance) if reach is None else np.asarray(reach, float)
    on = (residual <= reach) & (grid_col >= 0) & (grid_col < cols.size) & (grid_row >= 0) & (grid_row < rows.size)
    node_id = np.zeros(n, np.int64)
    status = np.full(n, OFF_LATTICE, np.int8)
    candidates = np.nonzero(on)[0]
    node = grid_row[candidates] * cols.size + grid_col[candidates] + 1
    speck = area[candidates] < MIN_NUMBERED_AREA * typical_area
    score = residual[candidates] / tolerance + AREA_WEIGHT * np.abs(
        np.log(np.maximum(area[candidates], 1) / max(typical_area, 1.0))
    )
    order = np.lexsort((score, speck, node))  # on each node, marks before specks
    candidates, node, speck = candidates[order], node[order], speck[order]
    first = np.ones(candidates.size, bool)
    first[1:] = node[1:] != node[:-1]
    first &= ~speck
    node_id[candidates[first]] = node[first]
    status[candidates[first]] = ASSIGNED
    total_area = dict(zip(node[first].tolist(), area[candidates[first]].tolist(), strict=True))
    for mark, mark_node in zip(candidates[~first].tolist(), node[~first].tolist(), strict=True):
        if mark_node not in total_area:
            continue  # only specks on this node: no id
        if total_area[mark_node] + area[mark] <= FRAGMENT_MAX_AREA * typical_area:
            total_area[mark_node] += int(area[mark])
            node_id[mark] = mark_node
            status[mark] = FRAGMENT
        else:
            status[mark] = DUPLICATE
    return Assignment(node_id=node_id, status=status)
