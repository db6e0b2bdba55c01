"""Marks the segmentation drew in two pieces: the lattice is the marks', not the pieces'.

The shipped model outlines the two lobes of crop2's craters apart; a lattice fitted to the lobes
was dense and sheared (31 x 20 nodes for a 6 x 7 grid). Pairs of pieces are joined for the fit
only when the joined lattice holds marks on far more of its nodes, so two rows of whole marks that
lie close together (tile_a) stay two rows: tests/register/test_close_rows.py. Pieces as far
from each other as from the neighbouring marks' pieces (a "C" cut in two, an ellipse 0.7 of the
pitch long) cannot be told from neighbours, and are not paired.
"""

from __future__ import annotations

import numpy as np
import pytest

from am.register import register_mask
from am.register.fit import fit_lattice
from am.register.pieces import join_pieces, node_occupancy
from am.register.testing import draw_lattice_mask, id_accuracy
from am.synth.lattice import Lattice

ROWS, COLS, PITCH = 10, 12, 38.0


def lattice_nodes(angle: float = 3.0) -> np.ndarray:
    return Lattice.centred(rows=ROWS, cols=COLS, width=520, height=440, pitch_x=PITCH, angle_deg=angle).nodes()


def in_pieces(nodes: np.ndarray, *, apart: float, seed: int = 0) -> np.ndarray:
    """Two points per node, ``apart`` px from each other in a random direction."""
    theta = np.random.default_rng(seed).uniform(0, np.pi, len(nodes))
    half = 0.5 * apart * np.column_stack([np.cos(theta), np.sin(theta)])
    return np.concatenate([nodes - half, nodes + half])


def test_a_lattice_of_whole_marks_has_no_pieces():
    nodes = lattice_nodes()
    joined = join_pieces(nodes, np.full(len(nodes), 100.0))
    assert joined.pairs == 0
    np.testing.assert_array_equal(joined.points, nodes)


def test_two_pieces_of_each_mark_join_at_the_mark():
    nodes = lattice_nodes()
    points = in_pieces(nodes, apart=12.0)
    joined = join_pieces(points, np.full(len(points), 60.0))
    assert joined.pairs == len(nodes)
    assert np.all(joined.area == 120.0)
    # Equal pieces meet halfway: each joined point is its node.
    distance = np.min(np.hypot(*(joined.points[:, None, :] - nodes[None, :, :]).transpose(2, 0, 1)), axis=1)
    assert distance.max() < 1e-9


def test_a_larger_piece_weighs_more():
    points = np.array([[0.0, 0.0], [10.0, 0.0], [100.0, 0.0], [100.0, 100.0], [0.0, 100.0]])
    joined = join_pieces(points, np.array([30.0, 10.0, 40.0, 40.0, 40.0]))
    assert joined.pairs == 1
    np.testing.assert_allclose(joined.points[-1], [2.5, 0.0])


def test_the_lattice_of_the_marks_holds_a_mark_on_nearly_every_node_and_that_of_pieces_does_not():
    nodes = lattice_nodes()
    points = in_pieces(nodes, apart=14.0)
    marks_lattice = fit_lattice(join_pieces(points, np.full(len(points), 60.0)).points)
    assert marks_lattice.pitch_x == pytest.approx(PITCH, abs=0.1)
    assert node_occupancy(marks_lattice, points) > 0.95
    pieces_lattice = fit_lattice(points)
    assert node_occupancy(pieces_lattice, points) < 0.5 * node_occupancy(marks_lattice, points)


@pytest.mark.parametrize("shape", ["disc", "ellipse", "crescent"])
@pytest.mark.parametrize("angle", [0.0, 5.0])
@pytest.mark.parametrize("given", [True, False])
def test_every_mark_in_two_pieces_gets_its_id(shape, angle, given):
    lattice = Lattice.centred(rows=ROWS, cols=COLS, width=520, height=440, pitch_x=PITCH, angle_deg=angle)
    drawn = draw_lattice_mask(lattice, width=520, height=440, radius=9.5, shape=shape,
                              split=range(1, ROWS * COLS + 1), rng=np.random.default_rng(1))
    reg = register_mask(drawn.mask, rows=ROWS if given else None, cols=COLS if given else None)
    assert (reg.rows, reg.cols) == (ROWS, COLS)
    assert reg.pitch_x == pytest.approx(PITCH, abs=0.5)
    assert id_accuracy(drawn, reg.ids) == 1.0
    assert reg.duplicates == 0

