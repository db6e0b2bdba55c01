"""Rows closer than half the column pitch (real tile_a: two rows about 30 px apart at a 66 px column
pitch): two marks of about a mark's size each are two rows, while a mark cut in pieces keeps one id;
a numbered mark as large as two is reported."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from am.register import Registration, register_mask
from am.register.marks import find_components
from am.register.split import OVERSIZE_AREA
from am.register.testing import draw_lattice_mask, id_accuracy
from am.synth.lattice import Lattice
from tests.real_samples import real_sample

COLS, PITCH = 8, 40.0
# Gaps before rows 1..6, in row pitches: rows 0 and 1 are 0.45 of the pitch apart.
GAPS = (0.45, 1.0, 1.1, 1.2, 1.45, 1.0)
ROWS = len(GAPS) + 1


def close_rows_lattice(gaps: tuple[float, ...] = GAPS) -> tuple[Lattice, int, int]:
    height, width = int(PITCH * (sum(gaps) + 3)), int(PITCH * (COLS + 2))
    lattice = Lattice.centred(rows=len(gaps) + 1, cols=COLS, width=width, height=height, pitch_x=PITCH)
    across = (np.concatenate([[0.0], np.cumsum(gaps)]) - np.arange(len(gaps) + 1)) * lattice.pitch_y
    along = np.array([0.0, 0.15, 0.2, 0.25, 0.15, 0.1, 0.05])[: len(gaps) + 1] * PITCH
    return replace(lattice, row_across=tuple(across.tolist()), row_along=tuple(along.tolist())), width, height


def oversized_warning(reg: Registration) -> str | None:
    return next((w for w in reg.warnings if "two marks may be joined" in w), None)


def named_ids(warning: str) -> set[int]:
    found = re.match(r"ids? ([0-9, ]+) (is|are) [0-9.]+ (to [0-9.]+ )?times( each)? a typical mark", warning)
    assert found, warning
    return {int(i) for i in found.group(1).split(", ")}


@pytest.mark.parametrize("shape", ["disc", "crescent", "c"])
@pytest.mark.parametrize("rows, cols", [(ROWS, COLS), (None, None)])
def test_two_rows_closer_than_half_a_pitch_are_two_rows(shape, rows, cols):
    lattice, width, height = close_rows_lattice()
    drawn = draw_lattice_mask(lattice, width=width, height=height, radius=6, shape=shape)
    # Every mark is a component of its own: the mask holds both close rows apart.
    assert find_components(drawn.mask).label.size == ROWS * COLS
    reg = register_mask(drawn.mask, rows=rows, cols=cols)
    assert (reg.rows, reg.cols) == (ROWS, COLS)
    assert id_accuracy(drawn, reg.ids) == 1.0
    assert reg.fragments == 0 and oversized_warning(reg) is None


def test_a_mark_cut_in_pieces_keeps_one_id_next_to_close_rows():
    lattice, width, height = close_rows_lattice()
    rng = np.random.default_rng(4)
    split = [1, 4, 10, 13, 20, 30, 41, 50]  # rows 0 and 1 (the close pair) among them
    drawn = draw_lattice_mask(lattice, width=width, height=height, radius=6, shape="crescent", split=split, rng=rng)
    assert find_components(drawn.mask).label.size > ROWS * COLS
    reg = register_mask(drawn.mask, rows=ROWS, cols=COLS)
    assert id_accuracy(drawn, reg.ids) == 1.0
    assert reg.fragments >= 4 and reg.duplicates == 0


def test_two_close_marks_joined_in_the_mask_are_reported():
    # 0.4 pitch apart with radius 9 the marks of rows 0 and 1 touch: one component per column.
    lattice, width, height = close_rows_lattice((0.4, 1.0, 1.1, 1.2, 1.45, 1.0))
    drawn = draw_lattice_mask(lattice, width=width, height=height, radius=9)
    comps = find_components(drawn.mask)
    assert comps.label.size == ROWS * COLS - COLS
    reg = register_mask(drawn.mask, rows=None, cols=None)
    warning = oversized_warning(reg)
    assert warning is not None
    joined = reg.table[reg.table["area_px"] >= OVERSIZE_AREA * comps.typical_area]
    assert joined.size == COLS and set(joined["row"].tolist()) <= {0, 1}
    assert named_ids(warning) == set(joined["id"].tolist())


def test_marks_of_ordinary_sizes_raise_no_size_warning():
    lattice = Lattice.centred(rows=8, cols=9, width=400, height=360, pitch_x=40, angle_deg=3)
    rng = np.random.default_rng(2)
    drawn = draw_lattice_mask(lattice, width=400, height=360, radius=9, shape="crescent", split=[5, 17, 30],
                              merged=[(40, 41)], debris=5, rng=rng)
    reg = register_mask(drawn.mask, rows=8, cols=9)
    assert id_accuracy(drawn, reg.ids) == 1.0
    assert oversized_warning(reg) is None


def cut_at_narrowest(mask: np.ndarray, labels: np.ndarray, label: int) -> None:
    """Cut one component of ``mask`` in two where it is narrowest: erode it until it falls apart,
    give every pixel to the nearer of the two largest cores, and clear the pixels where they meet."""
    component = labels == label
    core = component
    for _ in range(40):
        core = ndimage.binary_erosion(core)
        cores, count = ndimage.label(core, structure=np.ones((3, 3)))
        if count >= 2 and np.sort(np.bincount(cores.ravel())[1:])[-2] >= 5:
            break
    else:
        raise AssertionError(f"component {label} does not fall apart when eroded")
    two = np.argsort(np.bincount(cores.ravel())[1:])[-2:] + 1
    seeds = np.where(np.isin(cores, two), cores, 0)
    _, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    owner = np.where(component, seeds[iy, ix], 0)
    high = ndimage.maximum_filter(owner, 3)
    low = -ndimage.maximum_filter(np.where(component, -owner, -(10**6)), 3)
    mask[component & (high != low)] = 0


def test_real_tile_a_close_rows_cut_apart_register_as_seven_rows():
    path = real_sample("tile_a_512.png")
    from am.model.checkpoint import default_model_path
    from am.model.predict import Predictor
    from am.model.whole import predict_image_mask
    from am.normalize import read_normalised

    predictor = Predictor.from_checkpoint(default_model_path(), device="cpu", threads=2)
    mask = predict_image_mask(predictor, read_normalised(path)).astype(np.uint8) * 255
    comps = find_components(mask)
    joined = comps.label[comps.area >= OVERSIZE_AREA * comps.typical_area]
    reg = register_mask(mask, rows=None, cols=None)
    warning = oversized_warning(reg)
    if joined.size:
        # The model joins the marks of the two close top rows: each such mark is named.
        assert warning is not None
        named = reg.table[reg.table["area_px"] >= OVERSIZE_AREA * comps.typical_area]["id"]
        assert named.size == joined.size and named_ids(warning) == set(named.tolist())
    # Cut apart where they are narrowest, the joined marks make two rows 0.45 of the pitch apart.
    for label in joined.tolist():
        cut_at_narrowest(mask, comps.labels, label)
    for rows, cols in ((7, 4), (None, None)):
        reg = register_mask(mask, rows=rows, cols=cols)
        assert (reg.rows, reg.cols) == (7, 4)
        assert oversized_warning(reg) is None
        assert reg.row_positions_px is not None
        gaps = np.diff(reg.row_positions_px)
        assert gaps[0] < 0.6 * reg.pitch_x and np.all(gaps[1:] > 0.7 * reg.pitch_x)
        # The top two rows each hold a mark in columns 0 to 2, the first row above the second.
        table = reg.table
        for col in range(3):
            top = table[(table["col"] == col) & (table["row"] <= 1)]
            assert top["row"].tolist() == [0, 1] and top["y"][0] < top["y"][1]
