"""Masks one pixel high or wide are read as 2-D images; only a trailing channel axis of one goes."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from am.errors import InputError
from am.register.dataset import read_grey_tiff


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1)])
def test_a_mask_one_pixel_high_or_wide_keeps_both_axes(tmp_path, shape):
    path = tmp_path / "mask.tiff"
    tifffile.imwrite(path, np.full(shape, 255, np.uint8))
    assert read_grey_tiff(path, what="stitched mask").shape == shape


def test_a_trailing_channel_axis_of_one_is_dropped_and_three_channels_are_refused(tmp_path):
    path = tmp_path / "mask.tiff"
    tifffile.imwrite(path, np.zeros((5, 6, 1), np.uint8), photometric="minisblack")
    assert read_grey_tiff(path, what="stitched mask").shape == (5, 6)
    tifffile.imwrite(path, np.zeros((5, 6, 3), np.uint8), photometric="rgb")
    with pytest.raises(InputError, match=r"must be 8-bit single-channel, got uint8 with shape \(5, 6, 3\)"):
        read_grey_tiff(path, what="stitched mask")
