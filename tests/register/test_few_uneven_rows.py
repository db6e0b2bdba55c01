"""3-5 unevenly spaced rows: every row keeps its columns' numbers.

On so few rows the offsets of the rows line up about as well under a wrong drift between rows as
under the right one (fitted up to the search limit, 0.5 columns per row), and whole rows were
numbered one or two columns off. Their first and last marks now set their whole-column offsets.
"""

from __future__ import annotations

import numpy as np
import pytest

from am.register import register_mask
from am.register.testing import draw_lattice_mask, wrong_ids
from am.synth.lattice import Lattice


@pytest.mark.parametrize("seed", [7, 11])
def test_few_uneven_rows_are_numbered_in_their_own_columns(seed):
    # Seed 7 had 36 of 90 marks wrong, seed 11 54 of 90 with a shear of exactly 0.5.
    lattice = Lattice.centred(rows=5, cols=18, width=900, height=400, pitch_x=44)
    lattice = lattice.with_uneven_rows(np.random.default_rng(seed))
    drawn = draw_lattice_mask(lattice, width=900, height=400, radius=9, rng=np.random.default_rng(seed))
    reg = register_mask(drawn.mask, rows=5, cols=18)
    assert wrong_ids(drawn, reg.ids).size == 0
    assert reg.assigned == 90
    assert abs(reg.shear) < 0.1


def test_rows_sticking_out_are_moved_and_rows_missing_an_edge_mark_are_not():
    from am.register.rows import _align_row_ends

    full = np.arange(0, 10, dtype=float)
    # Rows 1 and 3 are a column off; row 2 misses its last mark.
    columns = [full, full + 1, full[:-1], full + 1, full]
    moved = _align_row_ends(np.zeros(5), columns)
    assert np.array_equal(moved, [0, 1, 0, 1, 0])
    # A row missing an edge mark alone: nothing to move.
    assert np.array_equal(_align_row_ends(np.zeros(3), [full, full[1:], full]), np.zeros(3))
    # Two rows against two, the marks cannot tell which pair is off: nothing moves.
    columns = [full, full + 1, full, full + 1]
    assert np.array_equal(_align_row_ends(np.zeros(4), columns), np.zeros(4))
