"""The table's x, y is a pixel of its mark, as read in the image, also for centres at .5.

The point was tested in box coordinates: a centre at .5 of a box starting at an odd pixel rounds
(half to even) onto another pixel there than in the image, and a background pixel was kept.
"""

from __future__ import annotations

import csv

import cv2
import numpy as np

from am.register import register_mask, write_outputs
from am.register.marks import point_on_mark
from am.register.outputs import coordinate_text
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


def test_the_csv_point_rounds_onto_the_same_pixel_as_the_table():
    # 1078.5022 is pixel 1079; to two decimals, "1078.50" would be pixel 1078 (half to even).
    assert coordinate_text(1078.5022) == "1078.51"
    assert coordinate_text(1077.4978) == "1077.49" and float(coordinate_text(1077.4978)) < 1077.5
    assert coordinate_text(12.495) in ("12.49", "12.50") and np.rint(float(coordinate_text(12.495))) == 12
    assert coordinate_text(3.5) == "3.50" and coordinate_text(6.25) == "6.25"
    values = np.random.default_rng(0).uniform(0, 5000, 200_000)
    values = np.concatenate([values, np.floor(values) + 0.5 + np.random.default_rng(1).uniform(-0.006, 0.006,
                                                                                             values.size)])
    texts = np.array([float(coordinate_text(v)) for v in values])
    np.testing.assert_array_equal(np.rint(texts), np.rint(values))
    assert np.abs(texts - values).max() <= 0.015


def test_every_csv_point_rounds_onto_its_mark(tmp_path):
    write_dataset(tmp_path / "ds", rows=8, cols=12, seed=202, uneven_rows=True)
    mask = cv2.imread(str(tmp_path / "ds" / "truth" / "group01" / "mask.png"), cv2.IMREAD_UNCHANGED)
    reg = register_mask(mask, rows=8, cols=12)
    write_outputs(tmp_path / "out", reg, source=np.zeros(mask.shape, np.uint8))
    with open(tmp_path / "out" / "am_coordinates.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(reg.table)
    for row in rows:
        x, y = int(np.rint(float(row["x"]))), int(np.rint(float(row["y"])))
        assert reg.ids[y, x] == int(row["id"]), row
