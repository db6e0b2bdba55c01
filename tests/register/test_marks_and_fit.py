"""The steps under register_mask: marks, their centres and points on them, the lattice fit, grid placement."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from am.errors import RegistrationError
from am.register.fit import fit_lattice
from am.register.grid import place_axis
from am.register.marks import find_components, mark_points
from am.register.testing import draw_lattice_mask
from am.synth.lattice import Lattice


def test_specks_and_one_pixel_lines_are_dropped_marks_kept_whole():
    mask = np.zeros((120, 200), np.uint8)
    for x in (30, 80, 130, 180):
        cv2.circle(mask, (x, 40), 9, 255, -1)
    cv2.circle(mask, (30, 90), 9, 255, -1)
    mask[100, 100] = 255  # speck
    mask[5, 60:90] = 255  # one-pixel line
    mask[90:93, 150:152] = 255  # 6 px: smaller than a mark's 15 %
    comps = find_components(mask)
    assert comps.label.size == 5
    assert comps.dropped == 3
    # Kept marks keep all their pixels (the opening is by reconstruction).
    disc = np.count_nonzero(cv2.circle(np.zeros_like(mask), (30, 40), 9, 255, -1))
    assert set(comps.area.tolist()) == {disc}
    assert comps.typical_area == disc


@pytest.mark.parametrize("offset, cut", [(0.5, 0.9), (0.35, 1.0), (0.2, 1.0)])
def test_point_on_a_crescent_is_on_it_and_its_centre_the_centroid(offset, cut):
    crop = np.zeros((40, 40), np.uint8)
    cv2.circle(crop, (20, 20), 12, 1, -1)
    cv2.circle(crop, (20 + int(offset * 12), 20), int(cut * 12), 0, -1)
    ys, xs = np.nonzero(crop)
    assert crop[round(ys.mean()), round(xs.mean())] == 0 or offset == 0.5
    (cx, cy), (x, y) = mark_points(crop.astype(bool))
    assert (cx, cy) == pytest.approx((xs.mean(), ys.mean()))
    assert crop[round(y), round(x)] == 1


def test_centre_and_point_of_a_disc_are_its_centre():
    crop = np.zeros((31, 31), np.uint8)
    cv2.circle(crop, (15, 15), 10, 1, -1)
    centre, on_mark = mark_points(crop.astype(bool))
    assert centre == pytest.approx((15.0, 15.0), abs=0.01)
    assert on_mark == centre


def ring_centres(angle: float, pitch: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """Centres of a 15 x 12 lattice of "C" marks, and each one's offset across its row from its node."""
    lattice = Lattice.centred(rows=15, cols=12, width=14 * pitch, height=17 * pitch, pitch_x=pitch,
                              angle_deg=angle)
    drawn = draw_lattice_mask(lattice, width=int(14 * pitch), height=int(17 * pitch), radius=0.27 * pitch,
                              shape="c")
    comps = find_components(drawn.mask)
    true_id = drawn.truth[np.rint(comps.mark_y).astype(int), np.rint(comps.mark_x).astype(int)].astype(int)
    theta = np.radians(angle)
    offset = comps.points - lattice.nodes()[true_id - 1]
    return comps, offset @ np.array([-np.sin(theta), np.cos(theta)])


@pytest.mark.parametrize("angle", [-10.0, 5.0])
def test_centres_of_c_marks_sit_at_one_offset_and_their_points_on_them(angle):
    # The centre of the largest inscribed circle of a ring of even thickness jumped round the ring
    # (+-4.3 px across a row 30 px high): enough to cut rows in two.
    comps, across = ring_centres(angle)
    assert comps.label.size == 15 * 12
    assert np.ptp(across) < 0.5
    xs, ys = np.rint(comps.mark_x).astype(int), np.rint(comps.mark_y).astype(int)
    np.testing.assert_array_equal(comps.labels[ys, xs], comps.label)


@pytest.mark.parametrize("angle", [-10.0, 10.0])
def test_fit_recovers_angle_pitches_and_shear(angle):
    lattice = Lattice(rows=30, cols=40, pitch_x=25.0, pitch_y=25.75, angle_deg=angle, origin_x=100, origin_y=80,
                      shear=0.02)
    rng = np.random.default_rng(0)
    points = lattice.nodes()
    keep = rng.random(len(points)) > 0.15
    points = points[keep] + rng.normal(0, 0.7, size=(keep.sum(), 2))
    debris = rng.uniform(0, 1200, size=(60, 2))
    fit = fit_lattice(np.vstack([points, debris]))
    assert fit.angle_deg == pytest.approx(angle, abs=0.02)
    assert fit.pitch_x == pytest.approx(25.0, rel=0.001)
    assert fit.pitch_y == pytest.approx(25.75, rel=0.001)
    assert fit.shear == pytest.approx(0.02, abs=0.002)
    col, row, residual = fit.indices(lattice.nodes())
    assert residual.max() < 1.0
    # Indices are relative to a seed mark but consistent: one shift maps them to (col, row) of the truth.
    rr, cc = np.divmod(np.arange(lattice.rows * lattice.cols), lattice.cols)
    assert np.unique(col - cc).size == 1 and np.unique(row - rr).size == 1


def test_fit_needs_four_marks():
    with pytest.raises(RegistrationError, match="at least 4"):
        fit_lattice(np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]))


def test_place_axis_takes_the_window_with_most_marks():
    # Lattice rows 3..12 are full, row 2 holds one piece of debris, row 13 a sparse edge row.
    index = np.concatenate([np.repeat(np.arange(3, 13), 20), [2], [13, 13, 13]])
    warnings: list[str] = []
    placement = place_axis(index, size=11, name="row", outside_image=lambda s, n: 0, warnings=warnings)
    assert (placement.start, placement.size) == (3, 11)


def test_place_axis_prefers_a_grid_inside_the_image_when_an_edge_row_is_empty():
    index = np.repeat(np.arange(0, 9), 10)
    warnings: list[str] = []
    # A grid starting at row -1 would put nodes outside the image; starting at 0 would not.
    placement = place_axis(index, size=10, name="row", outside_image=lambda s, n: 10 if s < 0 else 0,
                           warnings=warnings)
    assert placement.start == 0
    assert not any("ambiguous" in w for w in warnings)
