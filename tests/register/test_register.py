"""register_mask gives every mark its exact id through each failure mode of the original method."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from am.errors import InputError, RegistrationError
from am.register import TABLE_DTYPE, register_mask
from am.register.marks import MIN_AREA_FLOOR_PX
from am.register.testing import LatticeMask, draw_lattice_mask, wrong_ids
from am.synth.lattice import Lattice

ROWS, COLS = 8, 10
PITCH = 30.0
RADIUS = 8.0


def draw(
    *,
    rows: int = ROWS,
    cols: int = COLS,
    angle: float = 3.0,
    pitch_y: float | None = None,
    shear: float = 0.0,
    width: int = 380,
    height: int = 320,
    offset: tuple[float, float] = (0.0, 0.0),
    seed: int = 0,
    **kwargs,
) -> LatticeMask:
    lattice = Lattice.centred(
        rows=rows, cols=cols, width=width, height=height, pitch_x=PITCH, pitch_y=pitch_y, angle_deg=angle,
        shear=shear, offset_x=offset[0], offset_y=offset[1],
    )
    return draw_lattice_mask(lattice, width=width, height=height, radius=RADIUS,
                             rng=np.random.default_rng(seed), **kwargs)


def assert_exact(drawn: LatticeMask, ids: np.ndarray, *, bridges: bool = False) -> None:
    """Each mark carries its true id (on most of its pixels, never another id); debris carries none.

    Pixels of a mark may stay 0 only where drawing left them as a separate speck (a crescent's
    one-pixel tip), which registration rightly drops as noise.
    """
    marks = drawn.truth > 0
    other_id = np.unique(drawn.truth[marks & (ids != drawn.truth) & (ids > 0)])
    assert other_id.size == 0, f"marks with pixels of another id: {other_id.tolist()}"
    wrong = wrong_ids(drawn, ids)
    assert wrong.size == 0, f"marks without their id: {wrong.tolist()}"
    _, labels, stats, _ = cv2.connectedComponentsWithStats(drawn.mask, connectivity=8)
    lost_in = stats[labels[marks & (ids == 0)], cv2.CC_STAT_AREA]
    assert np.all(lost_in < MIN_AREA_FLOOR_PX), f"mark pieces of {sorted(set(lost_in.tolist()))} px lost their id"
    if not bridges:
        other = (drawn.mask > 0) & ~marks
        assert not ids[other].any(), f"ids on debris: {np.unique(ids[other]).tolist()}"
    assert not ids[drawn.mask == 0].any()


def assert_table(reg, drawn: LatticeMask) -> None:
    table = reg.table
    assert table.dtype == TABLE_DTYPE
    np.testing.assert_array_equal(table["id"], drawn.present)
    np.testing.assert_array_equal(table["id"], table["row"] * reg.cols + table["col"] + 1)
    # The point of each mark lies inside it, on a pixel with its own id.
    xs, ys = np.rint(table["x"]).astype(int), np.rint(table["y"]).astype(int)
    np.testing.assert_array_equal(reg.ids[ys, xs], table["id"])
    assert reg.empty_nodes == reg.rows * reg.cols - drawn.present.size


@pytest.mark.parametrize("angle", [-9.0, -4.0, 0.0, 4.0, 9.0])
def test_rotation_either_way(angle):
    drawn = draw(angle=angle, missing=[5, 33])
    reg = register_mask(drawn.mask, rows=ROWS, cols=COLS)
    assert_exact(drawn, reg.ids)
    assert_table(reg, drawn)
    assert reg.angle_deg == pytest.approx(angle, abs=0.1)
    assert reg.pitch_x == pytest.approx(PITCH, rel=0.005)
    assert reg.pitch_y == pytest.approx(PITCH, rel=0.005)
    assert (reg.rows, reg.cols, reg.estimated_shape) == (ROWS, COLS, False)
    assert reg.empty_nodes == 2
    np.testing.assert_array_equal(reg.empty_node_ids, [5, 33])
    assert reg.residual_px < 1.0


def test_missing_interior_row_shifts_nothing():
    row = 3
    drawn = draw(missing=[row * COLS + c + 1 for c in range(COLS)])
    reg = register_mask(drawn.mask, rows=ROWS, cols=COLS)
    assert_exact(drawn, reg.ids)
    assert reg.empty_nodes == COLS
    assert any("1 of the 8 rows" in w for w in reg.warnings)


def test_missing_interior_column_shifts_nothing():
    col = 6
    drawn = draw(angle=-5.0, missing=[r * COLS + col + 1 for r in range(ROWS)])
    reg = register_mask(drawn.mask, rows=ROWS, cols=COLS)
    assert_exact(drawn, reg.ids)
    assert_table(reg, drawn)


def test_missing_corner_marks():
    corners = [1, COLS, (ROWS - 1) * COLS + 1, ROWS * COLS]
    drawn = draw(angle=6.0, missing=corners)
    reg = register_mask(drawn.mask, rows=ROWS, cols=COLS)
    assert_exact(drawn, reg.ids)
    np.testing.assert_array_equal(reg.empty_node_ids, corners)
    # The fitted lattice still puts node 1 where the missing corner mark would be.
    true_first = drawn.lattice.node(0, 0)
    assert (reg.origin_x, reg.origin_y) == pytest.approx(true_first, abs=1.0)


def test_edge_row_and_column_mostly_missing():
    rng = np.random.default_rng(3)
    top = rng.choice(np.arange(1, COLS + 1), 8, replace=False)  # 80 % of row 0
    right = rng.choice(np.arange(1, ROWS) * COLS + COLS, 6, replace=False)  # most of the last column
    drawn = draw(angle=-7.0, missing=[*top.tolist(), *right.tolist()])
    reg = register_mask(drawn.mask, rows=ROWS, cols=COLS)
    assert_exact(drawn, reg.ids)


def test_whole_edge_row_missing_is_flagged_as_ambiguous():
    drawn = draw(missing=range(1, COLS + 1))
    reg = register_mask(drawn.mask, rows=ROWS, cols=COLS)
    assert reg.rows == ROWS
    assert any("ambiguous" in w for w in reg.warnings)
    assert reg.empty_nodes == COLS


def test_debris_gets_no_id():
    drawn = draw(angle=2.0, missing=[12, 47], debris=25, seed=4)
    reg = register_mask(drawn.mask, rows=ROWS, cols=COLS)
    assert_exact(drawn, reg.ids)
    assert reg.off_lattice >= 20
    assert reg.assigned == drawn.present.size


@pytest.mark.parametrize("shape", ["crescent", "thin_crescent", "c", "ellipse"])
def test_mark_shapes(shape):
    drawn = draw(angle=-4.0, shape=shape, missing=[20])
    reg = register_mask(drawn.mask, rows=ROWS, cols=COLS)
    assert_exact(drawn, reg.ids)
    assert_table(reg, drawn)


def test_thin_crescent_centroid_is_outside_but_point_is_inside():
    drawn = draw(angle=0.0, shape="thin_crescent")
    ys, xs = np.nonzero(drawn.truth == 1)
    assert drawn.truth[int(round(ys.mean())), int(round(xs.mean()))] == 0  # the trap the original fell in
    reg = register_mask(drawn.mask, rows=ROWS, cols=COLS)
    x, y = reg.table["x"][0], reg.table["y"][0]
    assert drawn.truth[int(round(y)), int(round(x))] == 1


def test_marks_clipped_by_the_image_edge():
    # The first column and row of marks are cut in half by the left and top edges.
    width, height = 320, 260
    probe = Lattice.centred(rows=ROWS, cols=COLS, width=width, height=height, pitch_x=PITCH, angle_deg=2.0)
    nodes = probe.nodes()
    offset = (-nodes[:, 0].min() + 1.0, -nodes[:, 1].min() + 2.0)
    drawn = draw(angle=2.0, width=width, height=height, offset=offset)
    assert drawn.present.size == ROWS * COLS
    reg = register_mask(drawn.mask, rows=ROWS, cols=COLS)
    assert_exact(drawn, reg.ids)


def test_split_marks_keep_one_id():
    drawn = draw(angle=5.0, split=[14, 15, 40, 66], missing=[2])
    reg = register_mask(drawn.mask, rows=ROWS, cols=COLS)
    assert_exact(drawn, reg.ids)
    assert reg.fragments >= 3
    assert reg.assigned == drawn.present.size


def test_merged_marks_are_split_back():
    drawn = draw(angle=-3.0, merged=[(23, 24), (45, 55), (71, 72)], missing=[9])
    reg = register_mask(drawn.mask, rows=ROWS, cols=COLS)
    assert_exact(drawn, reg.ids, bridges=True)
    assert reg.assigned == drawn.present.size


@pytest.mark.parametrize(("blob_radius", "clean"), [(34, False), (40, False), (50, True), (58, True)])
def test_a_blob_over_missing_marks_gets_no_id(blob_radius, clean):
    # An out-of-focus blob or fold over a hole of 3 x 3 missing marks (the largest also touching the
    # marks around it): cut by the nodes it covers, each share inside it would be a whole lattice
    # cell, 4 times a mark, and get an id. Those get none, every mark keeps its own id, and a warning
    # says something large lies there. Shares at a smaller blob's rim still pass for marks.
    hole = [row * COLS + col + 1 for row in range(2, 5) for col in range(3, 6)]
    drawn = draw(angle=2.0, missing=hole)
    mask = drawn.mask.copy()
    x, y = drawn.lattice.node(3, 4)
    cv2.circle(mask, (int(round(x)), int(round(y))), blob_radius, 255, -1)
    reg = register_mask(mask, rows=ROWS, cols=COLS)
    assert not wrong_ids(drawn, reg.ids).size
    assert reg.assigned >= drawn.present.size
    numbered_in_hole = set(reg.table["id"].tolist()) & set(hole)
    assert 3 * COLS + 4 + 1 not in numbered_in_hole  # the blob's middle
    assert not numbered_in_hole if clean else len(numbered_in_hole) <= 4
    assert any("may hide marks" in w for w in reg.warnings)


def test_a_scratch_across_a_row_of_marks_is_cut_into_its_marks():
    # A fibre touching every mark of a row joins them into one component as wide as the image;
    # each part's point must still lie inside its own part, with the right id.
    drawn = draw(angle=0.0, missing=[5])
    mask = drawn.mask.copy()
    y = int(round(drawn.lattice.node(3, 0)[1]))
    cv2.line(mask, (0, y), (mask.shape[1] - 1, y), 255, 2)
    reg = register_mask(mask, rows=ROWS, cols=COLS)
    assert reg.assigned == drawn.present.size
    row = reg.table[reg.table["row"] == 3]
    assert len(row) == COLS
    xs, ys = np.rint(row["x"]).astype(int), np.rint(row["y"]).astype(int)
    np.testing.assert_array_equal(reg.ids[ys, xs], row["id"])
    assert not wrong_ids(drawn, reg.ids).size


def test_one_region_holding_most_of_the_foreground_leaves_the_marks_marks():
    # A saturated region bigger than all the marks together must not become the "typical mark",
    # which would make every real mark debris.
    drawn = draw(angle=2.0)
    mask = drawn.mask.copy()
    mask[60:200, 60:200] = 255  # inside the lattice, over about 20 of its 80 marks
    assert (mask[60:200, 60:200] > 0).sum() > (mask > 0).sum() / 2
    reg = register_mask(mask, rows=ROWS, cols=COLS)
    under = set(np.unique(drawn.truth[58:202, 58:202]).tolist())  # marks inside or touching the region
    assert set(wrong_ids(drawn, reg.ids).tolist()) <= under
    assert reg.assigned >= drawn.present.size - len(under - {0})


def test_pitch_differs_between_axes_and_mild_shear():
    drawn = draw(angle=6.0, pitch_y=PITCH * 1.04, shear=0.03, missing=[7, 8, 9])
    reg = register_mask(drawn.mask, rows=ROWS, cols=COLS)
    assert_exact(drawn, reg.ids)
    assert reg.pitch_y == pytest.approx(PITCH * 1.04, rel=0.005)
    assert reg.shear == pytest.approx(0.03, abs=0.005)


def test_shape_is_estimated_without_rows_and_cols():
    drawn = draw(angle=-6.0, missing=[1, 2, 3, 50], debris=10)
    reg = register_mask(drawn.mask, rows=None, cols=None)
    assert (reg.rows, reg.cols, reg.estimated_shape) == (ROWS, COLS, True)
    assert "estimated a 8 x 10 grid" in reg.warnings[0]
    assert_exact(drawn, reg.ids)


def test_single_row_grid():
    drawn = draw(rows=1, cols=12, angle=2.0, height=120, missing=[4])
    reg = register_mask(drawn.mask, rows=1, cols=12)
    assert_exact(drawn, reg.ids)


def test_lattice_round_trip_matches_truth():
    drawn = draw(angle=-8.0, pitch_y=PITCH * 0.97, missing=[30])
    reg = register_mask(drawn.mask, rows=ROWS, cols=COLS)
    np.testing.assert_allclose(reg.lattice.nodes(), drawn.lattice.nodes(), atol=1.0)


# Impossible grids.


@pytest.mark.parametrize("rows, cols", [(0, 10), (8, -1), (2.5, 10)])
def test_bad_shape_is_an_input_error(rows, cols):
    with pytest.raises(InputError, match="must be a positive whole number"):
        register_mask(draw().mask, rows=rows, cols=cols)


def test_empty_mask():
    with pytest.raises(RegistrationError, match="mask is empty"):
        register_mask(np.zeros((100, 100), np.uint8), rows=2, cols=2)


def test_a_mask_of_one_region_is_named_as_such():
    with pytest.raises(RegistrationError, match="one connected region of 10000 px, not separate marks"):
        register_mask(np.full((100, 100), 255, np.uint8), rows=None, cols=None)


def test_too_few_marks():
    drawn = draw(rows=1, cols=3, height=100)
    with pytest.raises(RegistrationError, match="at least 4"):
        register_mask(drawn.mask, rows=None, cols=None)


@pytest.mark.parametrize("rows, cols", [(1, 1), (1, 3), (3, 1), (2, 1)])
def test_a_grid_of_fewer_positions_than_a_fit_needs_is_an_input_error(rows, cols):
    """Refused as the shape it is, not as a segmentation that found too few marks."""
    with pytest.raises(InputError, match=f"a {rows} x {cols} grid has {rows * cols} position.*at least 4 marks"):
        register_mask(draw().mask, rows=rows, cols=cols)


def test_far_more_rows_than_the_marks_support():
    with pytest.raises(RegistrationError, match=r"fill only 8 lattice rows but the grid was given 20 rows"):
        register_mask(draw().mask, rows=20, cols=COLS)


def test_more_lattice_columns_than_requested():
    with pytest.raises(RegistrationError, match=r"the marks fill 10 lattice columns but the grid was given 7"):
        register_mask(draw().mask, rows=ROWS, cols=7)


def test_far_more_positions_than_marks():
    with pytest.raises(RegistrationError, match="holds only"):
        register_mask(draw().mask, rows=100, cols=100)


def test_marks_that_form_no_grid():
    rng = np.random.default_rng(1)
    mask = np.zeros((400, 400), np.uint8)
    for x, y in rng.uniform(10, 390, size=(80, 2)):
        mask[int(y) - 2 : int(y) + 3, int(x) - 2 : int(x) + 3] = 255
    with pytest.raises(RegistrationError, match="regular grid"):
        register_mask(mask, rows=None, cols=None)


def test_mask_must_be_2d():
    with pytest.raises(InputError, match="2-D"):
        register_mask(np.zeros((10, 10, 3), np.uint8), rows=2, cols=2)


def test_two_full_marks_on_one_node_keep_the_better_match():
    lattice = Lattice.centred(rows=5, cols=6, width=300, height=240, pitch_x=40.0, angle_deg=2.0)
    drawn = draw_lattice_mask(lattice, width=300, height=240, radius=5.0)
    x, y = lattice.node(2, 3)
    mask = drawn.mask.copy()
    cv2.circle(mask, (round(x + 12), round(y)), 5, 255, -1)  # a second whole mark 12 px from node 16
    reg = register_mask(mask, rows=5, cols=6)
    assert_exact(drawn, reg.ids)
    assert reg.duplicates == 1 and reg.assigned == 30
    assert reg.ids[round(y), round(x + 12)] == 0
    assert reg.unassigned_xy[0] == pytest.approx((x + 12, y), abs=1.0)


# A grid one mark wide, given fewer columns (rows) than it shows.


@pytest.mark.parametrize("rows, cols, given", [(1, 10, (1, 8)), (10, 1, (7, 1))])
def test_a_grid_one_mark_wide_with_more_marks_than_given_is_refused(rows, cols, given):
    drawn = draw(rows=rows, cols=cols, angle=2.0, width=380 if cols > 1 else 120, height=380 if rows > 1 else 120)
    with pytest.raises(RegistrationError, match=r"the marks fill 10 lattice (columns|rows) but the grid was given"):
        register_mask(drawn.mask, rows=given[0], cols=given[1])


def test_a_grid_one_mark_wide_with_an_empty_edge_column_is_still_accepted():
    drawn = draw(rows=1, cols=10, angle=2.0, width=380, height=120)
    reg = register_mask(drawn.mask, rows=1, cols=11)
    assert reg.assigned == 10 and any("is ambiguous" in w for w in reg.warnings)


# Marks cut by the image's edge.


def test_the_visible_part_of_a_mark_cut_by_the_edge_keeps_its_id_over_a_speck():
    # The bottom row's nodes lie 5 px below the image: of each mark a 20 x 6 px strip shows 17 px
    # from its node (beyond the usual reach of 0.35 pitch, 14 px) and a 3 x 3 px speck 9 px from it.
    lattice = Lattice.centred(rows=7, cols=6, width=260, height=300, pitch_x=40.0, angle_deg=0.0)
    height = int(round(lattice.node(6, 0)[1])) - 5
    drawn = draw_lattice_mask(lattice, width=260, height=300, radius=10.0)
    mask = drawn.mask[:height].copy()
    mask[height - 8 :] = 0
    for col in range(6):
        x = int(round(lattice.node(6, col)[0]))
        mask[height - 6 :, x - 25 : x - 5] = 255
        mask[height - 3 :, x + 5 : x + 8] = 255
    reg = register_mask(mask, rows=7, cols=6)
    bottom = reg.table[reg.table["row"] == 6]
    assert bottom.size == 6
    np.testing.assert_allclose(bottom["x"] - [lattice.node(6, c)[0] for c in range(6)], -15.5, atol=1.0)
    assert np.all(bottom["area_px"] == 6 * 20 + 3 * 3)  # the speck joins its mark as a fragment
    assert reg.fragments == 6 and reg.off_lattice == 0


# One region far larger than the marks in a small grid.


def test_a_small_grid_with_a_blob_larger_than_all_its_marks_keeps_its_marks():
    drawn = draw(rows=4, cols=4, angle=2.0, width=400, height=400)
    mask = drawn.mask.copy()
    cv2.circle(mask, (330, 330), 40, 255, -1)  # off the lattice, more pixels than the 16 marks together
    assert np.count_nonzero(mask) - np.count_nonzero(drawn.mask) > np.count_nonzero(drawn.mask)
    reg = register_mask(mask, rows=4, cols=4)
    assert reg.assigned == 16 and not wrong_ids(drawn, reg.ids).size


def test_marks_left_out_beside_a_huge_region_are_counted_in_the_error():
    mask = np.zeros((300, 300), np.uint8)
    mask[150:290, 150:290] = 255
    for x in (20, 60, 100):
        cv2.circle(mask, (x, 30), 6, 255, -1)
    with pytest.raises(RegistrationError, match=r"3 of its 4 components were left out as debris"):
        register_mask(mask, rows=None, cols=None)


# Grids turned by 45 degrees or more.


def test_a_grid_imaged_turned_by_90_degrees_is_refused_with_the_shape_that_fits():
    lattice = Lattice.centred(rows=8, cols=12, width=500, height=500, pitch_x=PITCH, angle_deg=90.0)
    drawn = draw_lattice_mask(lattice, width=500, height=500, radius=RADIUS)
    with pytest.raises(RegistrationError, match=r"do fit a 12 x 8 grid as imaged.*give --rows 12 --cols 8"):
        register_mask(drawn.mask, rows=8, cols=12)
    assert register_mask(drawn.mask, rows=12, cols=8).assigned == 96


@pytest.mark.parametrize(("rows", "cols"), [(9, 8), (8, 7)])
def test_a_wrong_count_is_not_explained_as_a_turned_grid_that_would_need_empty_edges(rows, cols):
    # 6 x 8 marks: an 8 x 9 (or 7 x 8) grid would hold them only with empty edge rows, so the
    # mistyped count is the explanation, not a turn by 90 degrees.
    lattice = Lattice.centred(rows=6, cols=8, width=500, height=500, pitch_x=PITCH, angle_deg=0.0)
    drawn = draw_lattice_mask(lattice, width=500, height=500, radius=RADIUS)
    with pytest.raises(RegistrationError) as refused:
        register_mask(drawn.mask, rows=rows, cols=cols)
    assert "the marks fill" in str(refused.value) and "do fit a" not in str(refused.value)


def test_a_grid_turned_close_to_45_degrees_is_flagged():
    lattice = Lattice.centred(rows=8, cols=8, width=500, height=500, pitch_x=PITCH, angle_deg=43.0)
    drawn = draw_lattice_mask(lattice, width=500, height=500, radius=RADIUS)
    reg = register_mask(drawn.mask, rows=8, cols=8)
    assert not wrong_ids(drawn, reg.ids).size
    assert any("close to 45" in w for w in reg.warnings)
    assert not any("close to 45" in w for w in register_mask(draw(angle=9.0).mask, rows=ROWS, cols=COLS).warnings)
