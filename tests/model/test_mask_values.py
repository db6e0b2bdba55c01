"""Masks with NaN, infinite or negative values: refused by name, or read as marks on a background of 0.

A float mask of marks 1.0 on NaN was read as empty truth (after a warning that NaN counted as marks),
an all-NaN mask as empty without a word, and marks of -1 on 0 as marks everywhere but the marks.
Training, evaluation and pseudo-labelling share this reader, so each would have learnt or scored
against the wrong truth.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from am.errors import InputError
from am.evaluate.__main__ import read_pair
from am.imageio import write_png, write_tiff
from am.pseudolabel.__main__ import read_labels
from am.train.data import binary_mask, read_mask
from tests.model.mark_masks import square_marks


def _float_mask(marks: float, background: float) -> np.ndarray:
    return np.where(square_marks() > 0, marks, background).astype(np.float32)


@pytest.mark.parametrize(("marks", "background", "bad"), [
    (1.0, np.nan, 10272),  # marks on NaN, as some float exports leave the gaps
    (np.nan, np.nan, 96 * 128),  # all NaN: read as empty truth before, without a warning
    (np.inf, 0.0, 2016),
    (1.0, -np.inf, 10272),
])
def test_a_float_mask_with_values_that_are_not_finite_is_refused_by_name(
        tmp_path: Path, marks: float, background: float, bad: int) -> None:
    path = tmp_path / "gaps.tif"
    write_tiff(path, _float_mask(marks, background))
    with pytest.raises(InputError, match=rf"mask {path} has {bad} pixel\(s\) with NaN or infinite values"):
        read_mask(path)


def test_nan_in_a_colour_or_alpha_channel_is_refused(tmp_path: Path) -> None:
    marks = square_marks().astype(np.float32)
    rgba = np.zeros((*marks.shape, 4), np.float32)
    rgba[..., 3] = np.where(marks > 0, 1.0, np.nan)  # marks only in alpha, the rest not a number
    with pytest.raises(InputError, match="alpha.tif has 10272 pixel"):
        binary_mask(rgba, tmp_path / "alpha.tif")
    rgb = np.repeat(marks[..., None], 3, axis=2)
    rgb[0, 0, 1] = np.nan
    with pytest.raises(InputError, match="rgb.tif has 1 pixel"):
        binary_mask(rgb, tmp_path / "rgb.tif")


@pytest.mark.parametrize(("low", "dtype"), [(-1.0, np.float32), (-7, np.int16), (-2_000_000, np.int32)])
def test_marks_below_0_on_a_background_of_0_are_the_marks(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                          low: float, dtype: type) -> None:
    marks = square_marks()
    path = tmp_path / "negative.tif"
    write_tiff(path, np.where(marks > 0, low, 0).astype(dtype))
    with caplog.at_level(logging.WARNING):
        assert np.array_equal(read_mask(path), marks)
    assert caplog.text == ""  # as 0/255 is read: no "neither of them 0", no "swapped"


def test_a_signed_label_image_counts_every_labelled_pixel(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    marks = square_marks()
    _, labels = cv2.connectedComponents(marks, connectivity=8)
    signed = np.where(labels % 2 == 1, -labels, labels).astype(np.int16)  # ids of both signs on 0
    path = tmp_path / "labels.tif"
    write_tiff(path, signed)
    with caplog.at_level(logging.WARNING):
        assert np.array_equal(read_mask(path), marks)
    assert caplog.text == ""


@pytest.mark.parametrize(("low", "high", "dtype", "held"), [
    (-2, -1, np.int16, "the two levels -2 and -1"),
    (-1.0, 1.0, np.float32, "the two levels -1 and 1"),
    (-0.5, 1.0, np.float32, "3 levels from -0.5 to 1"),  # a grey mask, not a label image
])
def test_values_below_0_without_a_background_of_0_are_refused(tmp_path: Path, low: float, high: float,
                                                              dtype: type, held: str) -> None:
    mask = np.where(square_marks() > 0, high, low).astype(dtype)
    if held.startswith("3"):
        mask[:, :4] = 0
    path = tmp_path / "signed.tif"
    write_tiff(path, mask)
    with pytest.raises(InputError, match=rf"mask {path} holds {held}: .*save it as a 0/255 mask"):
        read_mask(path)


def test_evaluation_and_pseudo_labelling_refuse_a_nan_mask_too(tmp_path: Path) -> None:
    image = tmp_path / "image.png"
    write_png(image, (square_marks() * 200 + 20).astype(np.uint8))
    write_tiff(tmp_path / "labels" / "0_0.tif", _float_mask(1.0, np.nan))
    with pytest.raises(InputError, match="0_0.tif has 10272 pixel"):
        read_pair(image, tmp_path / "labels" / "0_0.tif")
    with pytest.raises(InputError, match="0_0.tif has 10272 pixel"):
        read_labels(tmp_path / "labels")
