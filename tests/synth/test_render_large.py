"""Synthetic images with more marks than a 16-bit id holds render whole, and ids.png stays 16-bit.

am.synth tiles, am.evaluate --synthetic and am.train --synthetic allow 4096 px images at a pitch of
8 px: about 820 x 820 lattice nodes, far more than 65535. The renderer once kept ids in uint16 and
crashed with an OverflowError at the 65536th mark.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from am.errors import InputError
from am.synth.dataset import MAX_MARKS, ids_png
from am.synth.lattice import Lattice
from am.synth.render import Style, render
from am.synth.truth import grow_ids, keep_apart

PITCH = 8.0


def test_2048_px_at_pitch_8_holds_more_than_65535_marks_in_lattice_order() -> None:
    # Nodes on the image's edges (offset by half a pitch) put 257 x 257 marks into the frame.
    lattice = Lattice.centred(rows=258, cols=258, width=2048, height=2048, pitch_x=PITCH, offset_x=4.0, offset_y=4.0)
    style = Style(pitch=PITCH, mark_radius=3.4, shape="blob", missing=0.0, jitter=0.0, size_jitter=0.03)
    scene = render(lattice, style, width=2048, height=2048, rng=np.random.default_rng(1))
    ids = scene.ids.ravel().astype(np.int64)
    present = np.unique(ids[ids > 0])
    assert present.size > MAX_MARKS and present.max() > MAX_MARKS
    np.testing.assert_array_equal(present, lattice.ids()[scene.present])
    np.testing.assert_array_equal(scene.mask == 255, scene.ids > 0)
    # Every id sits on its own node: id = row * cols + col + 1, as the lattice numbers its nodes.
    yy, xx = np.indices(scene.ids.shape)
    area = np.bincount(ids, minlength=lattice.rows * lattice.cols + 1)[present]
    cx = np.bincount(ids, weights=xx.ravel(), minlength=area.size)[present] / area
    cy = np.bincount(ids, weights=yy.ravel(), minlength=area.size)[present] / area
    nodes = lattice.nodes()[present - 1]
    inside = (nodes > 4).all(axis=1) & (nodes < 2044).all(axis=1)  # the border cuts the others
    assert inside.sum() > 60000
    assert np.hypot(cx - nodes[:, 0], cy - nodes[:, 1])[inside].max() < PITCH / 4


def test_truth_rules_keep_ids_above_65535() -> None:
    ids = np.zeros((6, 9), np.int32)
    ids[2:4, 1:3] = 70000
    ids[2:4, 3:5] = 70001  # abuts 70000: the seam goes into the larger id
    ids[2:4, 7] = 100000
    apart = keep_apart(ids)
    assert apart.dtype == np.int32 and (apart[ids == 70000] == 70000).all() and (apart[2:4, 3] == 0).all()
    grown = grow_ids(apart, 1)
    assert grown.dtype == np.int32 and set(np.unique(grown)) == {0, 70000, 70001, 100000}
    assert grown[1, 7] == 100000 and grown[2, 6] == 0  # grows, but not beside another mark


def test_ids_png_keeps_16_bit_ids_and_refuses_larger(tmp_path: Path) -> None:
    ids = np.array([[0, 1, MAX_MARKS]], np.int32)
    written = ids_png(ids, tmp_path / "ids.png")
    assert written.dtype == np.uint16
    np.testing.assert_array_equal(written, ids)
    with pytest.raises(InputError, match=rf"ids.png: mark id {MAX_MARKS + 1} does not fit a 16-bit PNG"):
        ids_png(ids + 1, tmp_path / "ids.png")
