"""3-5 rows slid along themselves by up to a quarter of a column, in turn one way and the other.

Such rows fit a regular lattice sheared by about half a column per row as tightly as their own
slides do: each row's marks sit on its nodes, but every other row is numbered from a column
further along, and the rows' ends no longer line up. The regular fit was tight, so uneven rows
were never tried, and whole rows came out a column off. Where the grid's columns are given, rows
whose marks fill more columns than that are tried as uneven rows, which keep every row within the
grid's columns. The grids are the fuzz benchmark's own (``am.register.testing.draw_fuzz_case``).

And uneven rows that hold every mark but a few pieces of debris are weighed against regular rows
over the points either holds: debris off the nodes of both only drew the two fits' figures together.
"""

from __future__ import annotations

import numpy as np
import pytest

from am.register import register_mask
from am.register.fit import fit_lattice
from am.register.rows import fit_uneven_rows
from am.register.testing import draw_fuzz_case, wrong_ids
from am.synth.lattice import Lattice

PITCH = 40.0
# (family, seed) of the fuzz benchmark whose rows were a column off under a lattice sheared by
# 0.45-0.5 column per row: 3 x 5, 5 x 5 and 4 x 40 grids.
CASES = [
    ("uneven_small_slide25", 35),
    ("uneven_small_slide25", 165),
    ("uneven_small_slide25", 353),
]
# Slides along the rows (fractions of a column) that a lattice sheared by half a column per row fits.
ALTERNATING = [(-0.24, 0.24, -0.24), (-0.22, 0.23, -0.2, 0.24, -0.23)]


@pytest.mark.parametrize(("family", "seed"), CASES)
def test_alternating_slides_keep_every_row_in_its_columns(family: str, seed: int) -> None:
    drawn, rows, cols, _ = draw_fuzz_case(family, seed)
    reg = register_mask(drawn.mask, rows=rows, cols=cols)
    assert wrong_ids(drawn, reg.ids).size == 0
    assert abs(reg.shear) < 0.15


@pytest.mark.parametrize("slides", ALTERNATING)
def test_rows_overflowing_the_given_columns_are_fitted_unevenly(slides: tuple[float, ...]) -> None:
    rows, cols = len(slides), 8
    lattice = Lattice(rows, cols, PITCH, PITCH, 2.0, origin_x=100.0, origin_y=100.0,
                      row_along=tuple(PITCH * s for s in slides))
    points = lattice.nodes()
    fit = fit_lattice(points, warnings=[])
    assert abs(abs(fit.shear) - 0.5) < 0.02  # the alias: tight, so the marks alone keep it
    assert fit_uneven_rows(fit, points, rows=rows) is None
    uneven = fit_uneven_rows(fit, points, rows=rows, cols=cols)
    assert uneven is not None
    assert abs(uneven.shear) < 0.02
    col, _, residual = uneven.indices(points)
    assert np.ptp(col) + 1 == cols
    assert residual.max() < 0.01 * PITCH


def test_a_regular_grid_within_its_columns_stays_regular() -> None:
    lattice = Lattice(4, 8, PITCH, PITCH, 2.0, origin_x=100.0, origin_y=100.0, shear=0.05)
    points = lattice.nodes()
    fit = fit_lattice(points, warnings=[])
    assert fit_uneven_rows(fit, points, rows=4, cols=8) is None


def test_debris_off_both_lattices_does_not_keep_the_regular_rows() -> None:
    # 5 x 6 grid, 3 pieces of debris: uneven rows hold all 30 marks within 1 px, the regular rows'
    # first row sits 12 px off its nodes, and the regular rows numbered every mark a row off.
    drawn, rows, cols, _ = draw_fuzz_case("uneven_small_shear", 492)
    reg = register_mask(drawn.mask, rows=rows, cols=cols)
    assert reg.uneven_rows
    assert wrong_ids(drawn, reg.ids).size == 0
