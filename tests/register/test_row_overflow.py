"""3-4 unevenly spaced rows whose close rows put a diagonal neighbour at about the column pitch.

Rows 0.65-0.75 of the pitch apart that slide along themselves by up to a quarter of a column have
a neighbour of the next row diagonally, within 45 degrees of +x and no farther than the next mark
of their own row. On a grid of 3-4 rows such a pair holds half the marks or more, and the lattice
took the diagonal as its column step: its rows then ran across the grid, and the right --rows was
refused with "the marks fill 9-38 lattice rows". The column step is the one nearly every mark has
a neighbour at. The grids are the fuzz benchmark's own (``am.register.testing.draw_fuzz_case``).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from am.register import register_mask
from am.register.fit import initial_steps
from am.register.marks import find_components
from am.register.testing import draw_fuzz_case, wrong_ids

# (family, seed) of the fuzz benchmark. Slide25 seed 16 (3 rows over 10 lattice rows): the two sets
# of vectors were about as large, and their median lay between them, at no mark's vector.
CASES = [
    ("uneven_small", 347),
    ("uneven_small_slide25", 347),
    ("uneven_small_shear", 16),
    ("uneven_small_shear", 53),
    ("uneven_small_shear", 108),
    ("uneven_small_shear", 109),
    ("uneven_small_slide25", 16),
    ("uneven_small_slide25", 369),
    ("uneven_small_slide25", 400),
]


@pytest.mark.parametrize(("family", "seed"), CASES)
def test_close_sliding_rows_keep_the_column_step_and_every_id(family: str, seed: int) -> None:
    drawn, rows, cols, _ = draw_fuzz_case(family, seed)
    reg = register_mask(drawn.mask, rows=rows, cols=cols)
    # Every mark mostly carries its own id: a pixel or two the drawing cut off a mark are a speck of
    # their own, left without id, as the fuzz benchmark scores it.
    assert wrong_ids(drawn, reg.ids).size == 0
    assert np.array_equal(np.sort(reg.table["id"]), drawn.present)
    true_angle = drawn.lattice.angle_deg
    assert abs(reg.angle_deg - true_angle) < 1.0
    assert abs(reg.pitch_x - drawn.lattice.pitch_x) < 0.02 * drawn.lattice.pitch_x


def test_the_column_step_is_the_one_most_marks_have_a_neighbour_at() -> None:
    # uneven_small seed 347: rows 1 and 2 are 0.67 of the pitch apart and slide 0.27 of a column
    # apart, so their marks' nearest neighbour within 45 degrees of +x is diagonal, 0.99 of the pitch.
    drawn, _, _, _ = draw_fuzz_case("uneven_small", 347)
    comps = find_components(drawn.mask)
    col_step, _ = initial_steps(comps.points, tree=cKDTree(comps.points))
    true_step, _ = drawn.lattice.basis()
    assert np.hypot(*(col_step - true_step)) < 0.05 * drawn.lattice.pitch_x
