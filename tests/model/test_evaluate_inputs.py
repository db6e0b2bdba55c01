"""How ``am.evaluate --images DIR --masks DIR`` lists and pairs its folders: as training lists a group's, no
image left out in silence, no mask taken for two images, no hidden file taken for an image."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

import am.evaluate.__main__ as cli
from am.errors import InputError
from am.imageio import write_png
from am.train.data import split_files

JPEG = b"\xff\xd8\xff\xe0 not read"


def _folders(tmp_path: Path, images: dict[str, bytes | None], masks: dict[str, bytes | None]) -> tuple[Path, Path]:
    """An images and a masks folder holding the named files: a 32 x 32 PNG where the bytes are None."""
    folders = tmp_path / "images", tmp_path / "masks"
    for folder, files in zip(folders, (images, masks), strict=True):
        folder.mkdir()
        for name, data in files.items():
            if data is None:
                write_png(folder / name, np.zeros((32, 32), np.uint8))
            else:
                (folder / name).write_bytes(data)
    return folders


def test_two_images_sharing_a_stem_each_need_a_mask_of_their_own_name(tmp_path: Path) -> None:
    images, masks = _folders(tmp_path, {"a.png": None, "a.tif": None}, {"a.png": None})
    # By its stem, the mask a.png was a.tif's too: two images scored against one image's marks.
    with pytest.raises(InputError, match=r"images/a.tif has no mask of the same name in .*masks \(the image a.png "
                                         r"beside it shares its stem, so only a mask named a.tif is its own"):
        cli.image_mask_pairs(images, masks)
    write_png(masks / "a.tif", np.zeros((32, 32), np.uint8))
    assert [(image.name, mask.name) for image, mask in cli.image_mask_pairs(images, masks)] == [
        ("a.png", "a.png"), ("a.tif", "a.tif")]


def test_an_image_alone_with_its_stem_still_takes_a_mask_of_another_suffix(tmp_path: Path) -> None:
    images, masks = _folders(tmp_path, {"a.tif": None, "b.png": None}, {"a.png": None, "b.tiff": None})
    assert [(image.name, mask.name) for image, mask in cli.image_mask_pairs(images, masks)] == [
        ("a.tif", "a.png"), ("b.png", "b.tiff")]


def test_training_pairs_two_images_sharing_a_stem_the_same_way(tmp_path: Path) -> None:
    group = tmp_path / "train" / "set" / "g1"
    group.mkdir(parents=True)
    images, masks = _folders(group, {"a.png": None, "a.tif": None}, {"a.png": None})
    images.rename(group / "source")
    masks.rename(group / "mask")
    with pytest.raises(InputError, match=r"source/a.tif has no mask in .*mask \(the image a.png beside it shares"):
        split_files(tmp_path, "train")


def test_jpegs_beside_readable_images_are_named_in_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    images, masks = _folders(tmp_path, {"a.png": None, "b.jpg": JPEG}, {"a.png": None, "b.jpg": JPEG})
    with caplog.at_level(logging.WARNING, logger="am.evaluate"):
        pairs = cli.image_mask_pairs(images, masks)
    assert [image.name for image, _ in pairs] == ["a.png"]
    assert "b.jpg (JPEG) in" in caplog.text and "not scored" in caplog.text and "cv2.imwrite(" in caplog.text


def test_a_folder_of_jpegs_alone_is_refused_with_how_to_convert_them(tmp_path: Path) -> None:
    images, masks = _folders(tmp_path, {"a.jpg": JPEG, "b.bmp": b"BM not read"}, {})
    with pytest.raises(InputError) as refused:
        cli.image_mask_pairs(images, masks)
    message = str(refused.value)
    assert "holds only 2 files:" in message and "a.jpg (JPEG)" in message and "b.bmp (BMP)" in message
    assert "cv2.imwrite(" in message and "a.png" in message
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"no images \(.png, .tif or .tiff\) in .*empty"):
        cli.image_mask_pairs(empty, masks)


def test_a_jpeg_mask_is_named_where_the_mask_is_missing(tmp_path: Path) -> None:
    images, masks = _folders(tmp_path, {"a.png": None}, {"a.jpg": JPEG})
    with pytest.raises(InputError, match=r"a.png has no mask of the same name in .*masks \(only .*a\.jpg \(JPEG\), "
                                         r"which is not read: convert it, e.g. python -c"):
        cli.image_mask_pairs(images, masks)


def test_hidden_files_are_no_images(tmp_path: Path) -> None:
    apple_double = b"\x00\x05\x16\x07 AppleDouble"  # a Mac's copy beside each file: no PNG at all
    images, masks = _folders(tmp_path, {"a.png": None, "._a.png": apple_double},
                             {"a.png": None, "._a.png": apple_double})
    assert [(image.name, mask.name) for image, mask in cli.image_mask_pairs(images, masks)] == [("a.png", "a.png")]
