"""A two-level mask is read as marks on background whatever its two values: "anything above 0" would
make every pixel of a 1/2 or 128/255 mask a mark. A mask mostly marked is named in a warning, since its
marks and background are likely swapped."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from am.imageio import write_png
from am.train.data import binary_mask, read_mask
from tests.model.mark_masks import square_marks


@pytest.mark.parametrize(("low", "high", "dtype"), [(1, 2, np.uint8), (128, 255, np.uint8),
                                                     (1000, 65535, np.uint16), (0.25, 1.0, np.float32)])
def test_two_levels_neither_of_them_0_are_cut_halfway(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                      low: float, high: float, dtype: type) -> None:
    marks = square_marks()
    mask = np.where(marks > 0, high, low).astype(dtype)
    with caplog.at_level(logging.WARNING):
        assert np.array_equal(binary_mask(mask, tmp_path / "levels.png"), marks)
    assert "levels.png" in caplog.text and "neither of them 0" in caplog.text


@pytest.mark.parametrize(("high", "dtype"), [(255, np.uint8), (1, np.uint8), (65535, np.uint16), (1.0, np.float32)])
def test_two_levels_on_0_are_read_as_they_are_without_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                                 high: float, dtype: type) -> None:
    marks = square_marks()
    with caplog.at_level(logging.WARNING):
        assert np.array_equal(binary_mask(marks.astype(dtype) * dtype(high), tmp_path / "plain.png"), marks)
    assert caplog.text == ""


def test_red_marks_on_white_are_not_every_pixel_a_mark(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """By luminance red (76) is darker than white (255): the white is cut as marks, and the warning names
    the file as a mask whose marks and background look swapped, not silently all marks."""
    marks = square_marks()
    rgb = np.full((*marks.shape, 3), 255, np.uint8)
    rgb[marks > 0] = (255, 0, 0)
    write_png(tmp_path / "red.png", rgb)
    with caplog.at_level(logging.WARNING):
        read = read_mask(tmp_path / "red.png")
    assert not read.all()
    assert np.array_equal(read, 1 - marks)
    assert "red.png" in caplog.text and "swapped" in caplog.text


def test_a_mask_mostly_marked_is_named_in_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    inverted = (1 - square_marks()) * 255
    with caplog.at_level(logging.WARNING):
        assert np.array_equal(binary_mask(inverted, tmp_path / "inverted.png"), inverted > 0)
    assert "inverted.png" in caplog.text and "swapped" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        binary_mask(square_marks() * 255, tmp_path / "fine.png")
    assert caplog.text == ""
