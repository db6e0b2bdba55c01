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

from am.register import fit, register_mask
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


def _noisy_grid(n: int, *, jitter: float, debris: int, pitch: float = 40.0) -> tuple[np.ndarray, np.ndarray]:
    """Mark centres of an n x n grid turned 4 degrees, each ``jitter`` pitches off its node (normal), with
    ``debris`` points scattered over it; and the true column step."""
    rng = np.random.default_rng(1)
    angle = np.deg2rad(4.0)
    turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    rows, cols = np.mgrid[0:n, 0:n]
    nodes = np.stack([cols.ravel(), rows.ravel()], axis=1) * pitch @ turn.T
    points = np.vstack([nodes + rng.normal(0, jitter * pitch, nodes.shape), rng.uniform(0, n * pitch, (debris, 2))])
    return points, turn @ np.array([pitch, 0.0])


def test_a_column_step_most_marks_hold_is_not_weighed_against_others(monkeypatch: pytest.MonkeyPatch) -> None:
    # No other vector can be held by 1.3 times as many marks: the search for others, seconds on a
    # 300 x 300 grid of marks 8 % of a pitch off their nodes, is not made.
    points, true_step = _noisy_grid(150, jitter=0.08, debris=1000)
    monkeypatch.setattr(fit, "_clusters", lambda *a, **k: pytest.fail("the other sets were looked for"))
    col_step, _ = initial_steps(points, tree=cKDTree(points))
    assert np.hypot(*(col_step - true_step)) < 0.1 * 40.0


def test_the_other_sets_of_a_large_grid_are_looked_for_among_a_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    points, _ = _noisy_grid(100, jitter=0.15, debris=8000)
    looked_at: list[int] = []
    clusters = fit._clusters
    monkeypatch.setattr(fit, "_clusters", lambda vectors, **k: looked_at.append(len(vectors)) or clusters(vectors, **k))
    initial_steps(points, tree=cKDTree(points))
    assert looked_at and 0 < looked_at[0] <= fit.MAX_CLUSTER_VECTORS
