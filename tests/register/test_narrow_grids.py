"""Grids 2-3 marks across: one mark missing in an edge row or column must shift no id.

With 2 marks a row, a column missing one mark held half of a full one and counted as empty, so the
grid was moved a column past it (every id off by one) or, with several such rows, refused with a
count of filled rows that left them out.
"""

from __future__ import annotations

import numpy as np
import pytest

from am.register import register_mask
from am.register.grid import place_axis
from am.register.testing import draw_lattice_mask, wrong_ids
from am.synth.lattice import Lattice


def register(rows: int, cols: int, missing: list[int]):
    lattice = Lattice.centred(rows=rows, cols=cols, width=800, height=800, pitch_x=35)
    drawn = draw_lattice_mask(lattice, width=800, height=800, radius=9, missing=missing,
                              rng=np.random.default_rng(0))
    return drawn, register_mask(drawn.mask, rows=rows, cols=cols)


@pytest.mark.parametrize(
    ("rows", "cols", "missing"),
    [
        (2, 20, [21]),  # column 0 holds one mark
        (3, 20, [21, 41]),
        (20, 2, [1, 40]),  # the first and last rows hold one mark each
        (15, 2, [1, 4, 14, 29]),  # was refused: "marks fill only 12 lattice rows"
        (6, 2, [1, 5, 7, 8, 12]),  # was refused with a row "well-filled" outside the grid
    ],
)
def test_an_edge_row_holding_one_mark_keeps_its_ids(rows, cols, missing):
    drawn, reg = register(rows, cols, missing)
    assert wrong_ids(drawn, reg.ids).size == 0
    assert reg.assigned == drawn.present.size
    assert not any("ambiguous" in w for w in reg.warnings), reg.warnings


def test_one_mark_fills_a_row_where_a_full_row_holds_two():
    # Lattice rows 0..5 of a 2-column grid holding 1, 2, 1, 0, 2, 1 marks.
    index = np.repeat(np.arange(6), [1, 2, 1, 0, 2, 1])
    warnings: list[str] = []
    placement = place_axis(index, size=6, name="row", outside_image=lambda s, n: 0, warnings=warnings)
    assert (placement.start, placement.size) == (0, 6)
    assert warnings == ["1 of the 6 rows of the grid have no marks at all"]


def test_a_tie_that_leaves_out_a_row_with_marks_is_named():
    # 2 columns: lattice rows -1..10 hold 1, 2 x 10, 1 marks; 11 rows given fit either way.
    index = np.repeat(np.arange(-1, 11), [1] + [2] * 10 + [1])
    warnings: list[str] = []
    place_axis(index, size=11, name="row", outside_image=lambda s, n: 0, warnings=warnings)
    assert any(w.startswith("the marks fill 12 lattice rows, more than the 11 given") and "--rows" in w
               for w in warnings), warnings
