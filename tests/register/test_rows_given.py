"""3-5 unevenly spaced rows that the given number of rows tells from a regular lattice, and debris
that must not hide such rows.

Rows 0.65-0.75 and 1.2-1.3 of the usual gap apart fit a regular lattice of the shorter gap tightly,
with an empty lattice row inside the wider gap: the marks seemed to fill a row more than the grid
has, and registration refused them. Where as many rows of marks show as the grid has, none is
missing, however wide a gap. A few pieces of debris off the uneven rows' nodes outweighed, in the
residual, rows that fit every mark within a pixel.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from am.errors import RegistrationError
from am.register import register_mask
from am.register.testing import LatticeMask, draw_lattice_mask, wrong_ids
from am.synth.lattice import Lattice


def uneven_grid(at: list[float], slides: list[float], *, cols: int, pitch: float, angle: float = 3.0) -> LatticeMask:
    """Discs on rows at ``at`` row pitches across, each slid by ``slides`` column pitches, 2 pitches
    of image around them."""
    rows = len(at)
    across = tuple(((np.asarray(at) - np.arange(rows)) * pitch).tolist())
    along = tuple((np.asarray(slides) * pitch).tolist())
    probe = Lattice(rows, cols, pitch, pitch, angle, row_across=across, row_along=along).nodes()
    low, high = probe.min(axis=0), probe.max(axis=0)
    width, height = (int(v) for v in np.ceil(high - low + 4 * pitch))
    lattice = Lattice(rows, cols, pitch, pitch, angle, origin_x=2 * pitch - float(low[0]),
                      origin_y=2 * pitch - float(low[1]), row_across=across, row_along=along)
    return draw_lattice_mask(lattice, width=width, height=height, radius=0.2 * pitch)


def ids_at_nodes(drawn: LatticeMask, ids: np.ndarray) -> np.ndarray:
    """The id registration gave the pixel at each node's centre, in the drawn ids' order."""
    x, y = np.rint(drawn.lattice.nodes()).astype(int).T
    return ids[y, x].astype(int)


@pytest.mark.parametrize(("at", "cols", "pitch"), [
    ([0.0, 1.26, 1.97], 17, 30.0),  # 4 lattice rows for 3
    ([0.0, 0.71, 1.95, 2.66, 3.95], 10, 40.0),  # 7 for 5
    ([0.0, 1.27, 1.95, 2.66, 3.41], 7, 30.0),  # 6 for 5
])
def test_rows_that_fit_a_regular_lattice_with_an_empty_row_between_are_the_rows_given(at, cols, pitch):
    drawn = uneven_grid(at, [0.0, 0.02, -0.02, 0.0, 0.03][: len(at)], cols=cols, pitch=pitch)
    reg = register_mask(drawn.mask, rows=len(at), cols=cols)
    assert reg.uneven_rows
    np.testing.assert_array_equal(ids_at_nodes(drawn, reg.ids), np.arange(1, len(at) * cols + 1))
    assert reg.assigned == len(at) * cols and reg.empty_nodes == 0
    np.testing.assert_allclose(np.diff(reg.row_positions_px), np.diff(at) * pitch, atol=1.0)


def test_without_the_row_count_such_rows_still_read_as_a_regular_lattice():
    # The marks alone fit 4 evenly spaced rows, one empty, as well: only the count given tells.
    drawn = uneven_grid([0.0, 1.26, 1.97], [0.0, 0.02, -0.02], cols=17, pitch=30.0)
    reg = register_mask(drawn.mask, rows=None, cols=None)
    assert (reg.rows, reg.cols) == (4, 17) and not reg.uneven_rows


def test_a_row_count_that_fits_neither_reading_is_still_refused():
    drawn = uneven_grid([0.0, 1.26, 1.97], [0.0, 0.02, -0.02], cols=17, pitch=30.0)
    with pytest.raises(RegistrationError, match="the marks fill 4 lattice rows but the grid was given 2 rows"):
        register_mask(drawn.mask, rows=2, cols=17)
    # Evenly spaced rows given one row too few: uneven rows would be 4 as well, not 3.
    even = uneven_grid([0.0, 1.0, 2.0, 3.0], [0.0] * 4, cols=12, pitch=30.0)
    with pytest.raises(RegistrationError, match="the marks fill 4 lattice rows but the grid was given 3 rows"):
        register_mask(even.mask, rows=3, cols=12)


def test_a_wide_gap_between_as_many_rows_as_given_holds_no_missing_row():
    # 1.29 pitches against a median gap of 0.7: 1.8 median gaps, past the 1.7 that keep a number for
    # a row without marks, so a sixth row was put in it and the 5 rows given refused.
    drawn = uneven_grid([0.0, 1.29, 1.98, 2.70, 3.35], [0.1, -0.05, 0.15, -0.1, 0.0], cols=12, pitch=32.0)
    reg = register_mask(drawn.mask, rows=5, cols=12)
    assert reg.uneven_rows
    np.testing.assert_array_equal(ids_at_nodes(drawn, reg.ids), np.arange(1, 61))


def test_debris_off_the_nodes_does_not_hide_uneven_rows():
    # 3 x 15 discs, rows 0.75 and 1.25 pitches apart, 5 marks missing, 3 pieces of debris. The
    # debris, about half a pitch off the uneven rows' nodes, held most of their residual (3.6 px
    # against 6.7 px for evenly spaced rows, not half): the regular rows were kept, the third row
    # of marks fell between two lattice rows and its 14 marks got no id.
    lattice = Lattice(rows=3, cols=15, pitch_x=38.6, pitch_y=38.6, angle_deg=-5.3, origin_x=70.2, origin_y=127.9,
                      row_across=(0.0, -9.5, 0.3), row_along=(7.1, 5.0, 0.6))
    drawn = draw_lattice_mask(lattice, width=694, height=283, radius=6.6, missing=[5, 7, 17, 24, 44])
    for x, y, area in [(326.3, 110.6, 84), (652.0, 202.0, 47), (594.3, 277.9, 81)]:
        cv2.circle(drawn.mask, (round(x), round(y)), round(float(np.sqrt(area / np.pi))), 255, -1)
    reg = register_mask(drawn.mask, rows=3, cols=15)
    assert reg.uneven_rows
    assert wrong_ids(drawn, reg.ids).size == 0 and reg.assigned == 40
    expected = np.setdiff1d(np.arange(1, 46), [5, 7, 17, 24, 44])
    np.testing.assert_array_equal(ids_at_nodes(drawn, reg.ids)[expected - 1], expected)
