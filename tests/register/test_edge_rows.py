"""A grid given one row (column) larger than the marks fill: debris must not pick the empty edge.

Which edge row of such a grid is empty cannot be read from the marks. Before, a piece of debris
near a node of one candidate row decided it, and every id shifted by a row without a warning.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest

from am.register import register_mask
from am.register.grid import place_axis
from am.register.testing import draw_lattice_mask
from am.synth.lattice import Lattice
from tests.scripts import load_script


def test_debris_in_an_empty_edge_row_does_not_choose_the_grid():
    # Lattice rows 0..6 hold 40 marks each; one piece of debris sits on a node of row -1.
    index = np.concatenate([np.repeat(np.arange(0, 7), 40), [-1]])
    warnings: list[str] = []
    placement = place_axis(index, size=8, name="row", outside_image=lambda s, n: 0, warnings=warnings)
    assert placement.start == 0
    assert any("which edge row is empty is ambiguous" in w for w in warnings)


def test_an_empty_edge_row_chosen_by_the_image_edge_is_named():
    index = np.concatenate([np.repeat(np.arange(0, 9), 10), [9]])
    warnings: list[str] = []
    # Row -1 would lie beyond the image; the debris in row 9 does not count.
    placement = place_axis(index, size=10, name="row", outside_image=lambda s, n: 10 if s < 0 else 0,
                           warnings=warnings)
    assert placement.start == 0
    assert any("the last row was left empty" in w for w in warnings)


def crescents(*, rows: int, cols: int, angle: float, seed: int):
    pitch = 30.0
    probe = Lattice(rows, cols, pitch, pitch, angle, 0.0, 0.0, 0.0).nodes()
    width, height = (np.ptp(probe, axis=0) + 2 * pitch).astype(int)
    lattice = Lattice.centred(rows=rows, cols=cols, width=width, height=height, pitch_x=pitch, angle_deg=angle)
    return draw_lattice_mask(lattice, width=width, height=height, radius=0.27 * pitch, shape="crescent",
                             debris=10, rng=np.random.default_rng(seed))


@pytest.mark.parametrize(("seed", "angle"), [(1, -4.0), (2, 0.0), (3, 0.0)])
def test_ids_do_not_shift_when_a_row_more_is_given(seed, angle):
    # 7 x 40 crescents with 10 pieces of debris, given --rows 8: these ids all shifted by a row
    # (+40), unwarned. The extra row's corners graze the image edge at -4 degrees and must not
    # decide either.
    drawn = crescents(rows=7, cols=40, angle=angle, seed=seed)
    reg = register_mask(drawn.mask, rows=8, cols=40)
    marks = drawn.truth > 0
    shifts = collections.Counter((reg.ids[marks].astype(int) - drawn.truth[marks].astype(int)).tolist())
    assert shifts.most_common(1)[0][0] == 0
    assert any("which edge row is empty is ambiguous" in w for w in reg.warnings)


def test_a_sparse_edge_row_that_shaped_the_grid_is_named():
    # Lattice rows 0..6 hold 40 marks each; row 7 holds 5 (partly acquired, or debris near its nodes).
    index = np.concatenate([np.repeat(np.arange(0, 7), 40), np.full(5, 7)])
    warnings: list[str] = []
    placement = place_axis(index, size=None, name="row", outside_image=lambda s, n: 0, warnings=warnings)
    assert (placement.start, placement.size) == (0, 8)
    assert warnings == ["the last row of the grid holds only 5 mark(s) where a full row holds about 40: if they "
                        "are debris, the grid has a row too many; check the overlay, or give --rows"]

    # Given 8 rows, the sparse row is taken in place of an empty one: ids may be one row off.
    shifted = np.concatenate([np.full(5, -1), np.repeat(np.arange(0, 7), 40)])
    warnings = []
    placement = place_axis(shifted, size=8, name="row", outside_image=lambda s, n: 0, warnings=warnings)
    assert placement.start == -1
    assert warnings == ["the first row of the grid holds only 5 mark(s) where a full row holds about 40: if they "
                        "are debris, ids are one row off; check --rows and the overlay"]


@pytest.mark.parametrize(("held", "at_edge"), [(1, False), (25, False), (5, True)])
def test_no_sparse_row_warning_for_stray_debris_full_rows_or_rows_cut_by_the_image_border(held, at_edge):
    # One piece counts as empty (other warnings cover it); 25 of 40 is a row; along the border
    # marks are hidden beyond the image.
    index = np.concatenate([np.repeat(np.arange(0, 7), 40), np.full(held, 7)])
    warnings: list[str] = []
    place_axis(index, size=None, name="row", outside_image=lambda s, n: 0, warnings=warnings,
               at_image_edge=lambda i: at_edge and i == 7)
    assert not any("holds only" in w for w in warnings), warnings


def test_a_sparse_column_of_marks_inside_the_image_is_named_and_one_at_the_border_is_not():
    pitch, rows, cols = 30.0, 7, 20
    # Column 20 holds 3 of its 7 marks, with 5 pitches of empty image beyond it.
    inside = Lattice.centred(rows=rows, cols=cols + 1, width=int((cols + 10) * pitch),
                             height=int((rows + 2) * pitch), pitch_x=pitch, angle_deg=0.0)
    missing = [r * (cols + 1) + cols + 1 for r in range(3, rows)]
    drawn = draw_lattice_mask(inside, width=int((cols + 10) * pitch), height=int((rows + 2) * pitch),
                              radius=0.27 * pitch, missing=missing)
    reg = register_mask(drawn.mask, rows=None, cols=None)
    assert (reg.rows, reg.cols) == (rows, cols + 1)
    assert any(w.startswith("the last column of the grid holds only 3 mark(s) where a full column holds about 7")
               and w.endswith("the grid has a column too many; check the overlay, or give --cols")
               for w in reg.warnings), reg.warnings

    # The same marks cut by the image's right border: the hidden ones explain the sparse column.
    at_border = drawn.mask[:, : int(inside.nodes()[cols, 0]) + 3]
    reg = register_mask(at_border, rows=None, cols=None)
    assert reg.cols == cols + 1
    assert not any("holds only" in w for w in reg.warnings), reg.warnings


def test_the_edge_debris_benchmark_measures_shifts_by_row_and_column():
    bench = load_script(Path(__file__).resolve().parents[2] / "benchmarks" / "edge_debris_bench.py")
    drawn = bench.draw(shape="disc", debris=10, seed=0, angle=0.0, margin=6)
    assert bench.shift(drawn.truth, register_mask(drawn.mask, rows=7, cols=40).ids, 40) == (0, 0)
    # The same ids read on a grid one row lower and one column further: every mark is off by (1, 1).
    truth = drawn.truth.astype(np.int64)
    moved = np.where(truth > 0, truth + 41 + 1 + (truth - 1) // 40, 0)
    assert bench.shift(drawn.truth, moved, 41) == (1, 1)


def test_many_debris_rows_beyond_the_grid_do_not_make_the_full_row_small():
    # 7 rows of 40 marks, and 12 lattice rows beyond them holding 2-4 pieces of debris each: the
    # median row held 3 marks, so the debris rows "contradicted" the 7 rows given.
    rng = np.random.default_rng(0)
    debris_rows = np.concatenate([np.arange(-6, 0), np.arange(7, 13)])
    index = np.concatenate([np.repeat(np.arange(0, 7), 40), np.repeat(debris_rows, rng.integers(2, 5, 12))])
    warnings: list[str] = []
    placement = place_axis(index, size=7, name="row", outside_image=lambda s, n: 0, warnings=warnings)
    assert (placement.start, placement.size) == (0, 7)
    assert any("beyond the 7-row grid were left without id" in w for w in warnings), warnings


@pytest.mark.parametrize("seed", [0, 1])
def test_debris_between_the_rows_does_not_pass_for_rows_of_their_own(seed):
    # 120 pieces of debris on 7 x 40 crescents with 6 pitches of image around them: the debris
    # between rows outnumbered the rows' own peaks, dragged a full row's height down and came back
    # as rows half a pitch apart, and the 7 rows given were refused.
    bench = load_script(Path(__file__).resolve().parents[2] / "benchmarks" / "edge_debris_bench.py")
    drawn = bench.draw(shape="crescent", debris=120, seed=seed, angle=-4.0, margin=6)
    reg = register_mask(drawn.mask, rows=7, cols=40)
    assert bench.shift(drawn.truth, reg.ids, 40) == (0, 0)
    assert not any("unevenly spaced" in w for w in reg.warnings), reg.warnings


def test_a_speck_alone_on_a_node_gets_no_id_but_joins_a_mark_as_a_fragment():
    from am.register.grid import ASSIGNED, FRAGMENT, OFF_LATTICE, AxisPlacement, assign_nodes

    # Marks on nodes (0, 0) and (1, 0); a 6 px speck alone on node (3, 0), as one at the image
    # border in an otherwise empty column took id 4; another speck beside the mark on node (1, 0).
    col = np.array([0, 1, 3, 1])
    row = np.zeros(4, np.int64)
    placement = AxisPlacement(start=0, size=4, estimated=False)
    assignment = assign_nodes(col, row, residual=np.array([1.0, 1.0, 2.0, 6.0]), area=np.array([360, 350, 6, 8]),
                              tolerance=14.0, typical_area=360.0, cols=placement,
                              rows=AxisPlacement(start=0, size=1, estimated=False))
    assert assignment.node_id.tolist() == [1, 2, 0, 2]
    assert assignment.status.tolist() == [ASSIGNED, ASSIGNED, OFF_LATTICE, FRAGMENT]


def test_the_joined_marks_warning_says_how_large_the_marks_are():
    from am.register.registration import _oversized_warning

    assert _oversized_warning(np.array([[124, 584]]), typical_area=360.0) == (
        "id 124 is 1.6 times a typical mark (360 px): two marks may be joined in the mask; check the overlay")
    assert _oversized_warning(np.array([[3, 600], [9, 760]]), typical_area=360.0).startswith(
        "ids 3, 9 are 1.7 to 2.1 times a typical mark (360 px)")
