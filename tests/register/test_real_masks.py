"""Registration on the real reference masks (the original project's U-Net output on real crops).

The crops are small, at half resolution, and their masks carry the original model's mistakes;
their rows are not evenly spaced either (the gaps grow by up to 40 % from top to bottom), so
the test checks sane behaviour, not ids: a lattice of the visible pitch, ids only on mask pixels,
outputs a person can open, and a clear refusal where no single lattice fits.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from am.errors import RegistrationError
from am.register import register_mask, write_outputs

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real"


def load(name: str) -> np.ndarray:
    path = REAL / name
    if not path.is_file():
        pytest.skip(f"real samples not found at {REAL.resolve()}")
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)


@pytest.mark.parametrize("crop, shape", [("crop2", (6, 7)), ("crop3", (10, 8))])
def test_reference_masks_register(tmp_path, crop, shape):
    mask = load(f"{crop}_reference_mask.png")
    reg = register_mask(mask, rows=None, cols=None)
    assert reg.estimated_shape and (reg.rows, reg.cols) == shape
    # Marks are 25-40 px apart at the crops' half resolution, the grid nearly level.
    assert min(reg.pitch_x, reg.pitch_y) > 20 and max(reg.pitch_x, reg.pitch_y) < 45
    assert abs(reg.angle_deg) < 10
    assert reg.assigned >= 0.65 * reg.found
    assert not reg.ids[mask == 0].any()
    assert np.unique(reg.ids[reg.ids > 0]).size == reg.assigned
    write_outputs(tmp_path, reg, source=load(f"{crop}_image.png"))
    assert json.loads((tmp_path / "registration.json").read_text())["marks_assigned"] == reg.assigned


def test_split_real_marks_keep_one_id_each():
    # crop2's marks are mostly segmented as a large piece with one or two small ones beside it.
    reg = register_mask(load("crop2_reference_mask.png"), rows=6, cols=7)
    assert reg.fragments >= 3
    assert reg.assigned >= 38


def test_irregular_crop_is_refused_with_a_reason():
    # crop1's rows are 12 to 47 px apart and a bright blob adds false marks: no lattice fits.
    with pytest.raises(RegistrationError, match="do not form a regular grid"):
        register_mask(load("crop1_reference_mask.png"), rows=None, cols=None)
