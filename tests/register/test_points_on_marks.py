"""The table's x, y is a pixel of its mark, as read in the image, also for centres at .5.

The point was tested in box coordinates: a centre at .5 of a box starting at an odd pixel rounds
(half to even) onto another pixel there than in the image, and a background pixel was kept.
"""

from __future__ import annotations

import cv2
import numpy as np

from am.register import register_mask
from am.register.marks import point_on_mark
from am.synth.dataset import write_dataset


def test_the_point_is_tested_where_it_rounds_in_the_image():
    component = np.array([[1, 0], [0, 1]], bool)
    # Centre (0.5, 0.5) of a crop whose top-left pixel is (1, 0): 1.5 rounds to 2 in the image,
    # crop column 1, row 0, which is background; in the crop 0.5 rounds to 0, a mark pixel.
    x, y = point_on_mark(component, 0.5, 0.5, origin=(1, 0))
    assert component[int(np.rint(0 + y)) - 0, int(np.rint(1 + x)) - 1]


def test_every_table_point_rounds_onto_its_mark(tmp_path):
    # This acquisition's id 70 has its centre at x = 374.5 and was given a background pixel.
    write_dataset(tmp_path / "ds", rows=8, cols=12, seed=202, uneven_rows=True)
    mask = cv2.imread(str(tmp_path / "ds" / "truth" / "group01" / "mask.png"), cv2.IMREAD_UNCHANGED)
    reg = register_mask(mask, rows=8, cols=12)
    ys, xs = np.nonzero(reg.ids)
    count = np.bincount(reg.ids[ys, xs])
    centre_x = np.bincount(reg.ids[ys, xs], weights=xs)[count > 0] / count[count > 0]
    assert np.any(centre_x % 1 == 0.5), "the acquisition must hold centres at .5 to test their rounding"
    for record in reg.table:
        x, y = int(np.rint(record["x"])), int(np.rint(record["y"]))
        assert reg.ids[y, x] == record["id"], (int(record["id"]), float(record["x"]), float(record["y"]))
