"""One reading of a mask file for training, evaluation and pseudo-labelling: marks drawn only in an
RGBA mask's alpha channel, and the ids of a 16-bit label image, are marks, not lost pixels."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from am.evaluate.__main__ import read_pair
from am.imageio import write_png
from am.pseudolabel.__main__ import main as pseudolabel_main
from am.pseudolabel.__main__ import read_labels
from am.train.data import binary_mask, load_split, read_mask
from tests.model.mark_masks import square_marks


def _labels(marks: np.ndarray) -> np.ndarray:
    """The marks numbered from 1, in 16 bits, as the generator's ids.png."""
    _, labels = cv2.connectedComponents(marks, connectivity=8)
    return labels.astype(np.uint16)


def test_marks_only_in_the_alpha_channel_are_read(tmp_path: Path) -> None:
    marks = square_marks()
    rgba = np.zeros((*marks.shape, 4), np.uint8)
    rgba[..., 3] = marks * 255
    write_png(tmp_path / "alpha.png", rgba)
    assert np.array_equal(read_mask(tmp_path / "alpha.png"), marks)
    # White marks on a white, transparent background: the colour says nothing, alpha everything.
    rgba[..., :3] = 255
    assert np.array_equal(binary_mask(rgba, tmp_path / "white.png"), marks)
    # Opaque colour marks (alpha constant) read by colour, as before.
    opaque = np.zeros((*marks.shape, 4), np.uint8)
    opaque[..., 3] = 255
    opaque[marks > 0, 0] = 255
    assert np.array_equal(binary_mask(opaque, tmp_path / "red.png"), marks)
    # Red marks painted on a transparent layer: a mark is opaque and red.
    painted = opaque.copy()
    painted[..., 3] = marks * 255
    assert np.array_equal(binary_mask(painted, tmp_path / "painted.png"), marks)


def test_a_16_bit_label_image_counts_every_labelled_pixel(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    marks = square_marks()
    labels = _labels(marks)
    assert labels.max() == 12
    write_png(tmp_path / "ids.png", labels)
    with caplog.at_level(logging.WARNING):
        assert np.array_equal(read_mask(tmp_path / "ids.png"), marks)
    assert "grey levels" not in caplog.text
    # Ids in 8 bits too, and a 16-bit mask of many large ids (am_coordinates.png numbers every mark).
    assert np.array_equal(binary_mask(labels.astype(np.uint8), tmp_path / "ids8.png"), marks)
    assert np.array_equal(binary_mask(labels * 1000, tmp_path / "big.png"), marks)


def test_a_resampled_or_noisy_grey_mask_is_still_cut_at_half_its_maximum(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    marks = square_marks() * 255
    resized = cv2.resize(cv2.resize(marks, (256, 192), interpolation=cv2.INTER_LINEAR), (128, 96),
                         interpolation=cv2.INTER_LINEAR)
    assert len(np.unique(resized)) > 2
    with caplog.at_level(logging.WARNING):
        assert np.array_equal(binary_mask(resized, tmp_path / "resized.png"), resized > 127)
    assert "grey levels" in caplog.text
    background = np.zeros_like(marks)
    background[40:, :] = 2  # a background of 0-2, most of the image not 0
    background[30:40, :] = 1
    noisy = np.maximum(marks, background)
    assert np.array_equal(binary_mask(noisy, tmp_path / "noisy.png"), marks > 0)


def test_training_and_pseudo_labelling_read_a_mask_alike(tmp_path: Path) -> None:
    marks = square_marks()
    image = (marks * 200 + 20).astype(np.uint8)
    group = tmp_path / "data" / "train" / "ds" / "g"
    rgba = np.zeros((*marks.shape, 4), np.uint8)
    rgba[..., 3] = marks * 255
    for name, mask in (("alpha", rgba), ("ids", _labels(marks)), ("grey", marks * 255)):
        write_png(group / "source" / f"{name}.png", image)
        write_png(group / "mask" / f"{name}.png", mask)
        write_png(tmp_path / name / "0_0.png", mask)
        label = read_labels(tmp_path / name)[0]
        assert np.array_equal(label.mask, marks * 255), name
    for item in load_split(tmp_path / "data", "train"):
        assert np.array_equal(item.mask, marks), item.name
    for name in ("alpha", "ids", "grey"):  # and evaluation, whose --images reads pairs as the pipeline does
        pair = read_pair(group / "source" / f"{name}.png", group / "mask" / f"{name}.png")
        assert np.array_equal(pair.mask > 0, marks > 0), name


@pytest.mark.parametrize(("args", "words"), [
    (["--low", "nan"], "--low and --high"),
    (["--high", "inf"], "--low and --high"),
])
def test_pseudolabel_refuses_numbers_that_are_not_finite(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                         args: list[str], words: str) -> None:
    with pytest.raises(SystemExit) as stopped:
        pseudolabel_main([str(tmp_path / "image.png"), "--labels", str(tmp_path), "--out", str(tmp_path / "out"),
                          *args])
    assert stopped.value.code == 2 and words in capsys.readouterr().err
