"""Training folders as copies from a Mac or a Jupyter session leave them: hidden files and folders
are skipped at every level, and images in a format training does not read are named with how to
convert them, never dropped in silence."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from am.errors import InputError
from am.imageio import write_png
from am.train.data import split_files


def _pair(group: Path, name: str, *, source_suffix: str = ".png", mask_suffix: str = ".png") -> None:
    image = np.zeros((32, 32), np.uint8)
    for folder, suffix in (("source", source_suffix), ("mask", mask_suffix)):
        path = group / folder / f"{name}{suffix}"
        if suffix == ".png":
            write_png(path, image)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\xff\xd8\xff\xe0 not read")


def test_hidden_files_and_folders_are_skipped_at_every_level(tmp_path: Path) -> None:
    group = tmp_path / "train" / "set" / "g1"
    _pair(group, "0000")
    # AppleDouble files: not PNGs at all, which stopped training with "not a PNG file".
    (group / "source" / "._0000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (group / "mask" / "._0000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    # Jupyter's copies, as a dataset and as a group: they would train twice.
    _pair(tmp_path / "train" / ".ipynb_checkpoints" / "g1", "0000")
    _pair(tmp_path / "train" / "set" / ".ipynb_checkpoints", "0000")
    _pair(tmp_path / "train" / "__MACOSX" / "g1", "0000")
    files = split_files(tmp_path, "train")
    assert [f.name for f in files] == ["train/set/g1/source/0000.png"]
    files[0].read()


def test_a_group_of_jpegs_alone_is_named_with_how_to_convert_them(tmp_path: Path) -> None:
    _pair(tmp_path / "train" / "set" / "g1", "0000", source_suffix=".jpg", mask_suffix=".jpg")
    with pytest.raises(InputError) as refused:
        split_files(tmp_path, "train")
    message = str(refused.value)
    assert "0000.jpg (JPEG)" in message and "training does not read" in message
    assert "cv2.imwrite(" in message and "0000.png" in message


def test_jpegs_beside_readable_images_are_named_in_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    group = tmp_path / "train" / "set" / "g1"
    _pair(group, "0000")
    _pair(group, "0001", source_suffix=".jpeg", mask_suffix=".jpeg")
    with caplog.at_level(logging.WARNING):
        files = split_files(tmp_path, "train")
    assert [f.name for f in files] == ["train/set/g1/source/0000.png"]
    assert "0001.jpeg (JPEG)" in caplog.text and "not read" in caplog.text and "cv2.imwrite(" in caplog.text


def test_a_jpeg_mask_is_named_where_the_mask_is_missing(tmp_path: Path) -> None:
    _pair(tmp_path / "train" / "set" / "g1", "0000", mask_suffix=".jpg")
    with pytest.raises(InputError, match=r"has no mask in .* \(only .*0000\.jpg \(JPEG\), which is not read"):
        split_files(tmp_path, "train")
