"""What a source image's header and first bytes show is refused or warned about before any work starts:
a JPEG TIFF cut short, several planes or CMYK, a file named as the other format, an EXIF orientation."""

from __future__ import annotations

import logging
import shlex
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from am.dataset import DatasetLayout
from am.errors import InputError
from am.imageio import _check_jpeg_ends, check_complete, encode_png, read_header, read_image, write_png
from am.prepare import check_group_image
from am.settings import Settings
from tests.images.tiffs import tiff_bytes

RNG = np.random.default_rng(11)
IMAGE = RNG.integers(0, 256, (300, 320), dtype=np.uint8)


def _group_image(root: Path, name: str, data: bytes) -> DatasetLayout:
    """A dataset under ``root`` whose one group, ``g``, holds ``data`` as ``name``."""
    (root / "source" / "g").mkdir(parents=True)
    (root / "source" / "g" / name).write_bytes(data)
    return DatasetLayout(root)


def _jpeg_segments(path: Path) -> list[tuple[int, int]]:
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        return [(int(offset), int(count)) for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True)]


def test_padding_after_a_jpeg_segments_end_marker_passes(tmp_path: Path) -> None:
    """Some writers pad a segment past its end marker: that is no cut file."""
    path = tmp_path / "segments.bin"
    stream = b"\xff\xd8" + bytes(range(200)) + b"\xff\xd9"
    path.write_bytes(stream + bytes(16) + stream + bytes(100))
    _check_jpeg_ends(path, [0, len(stream) + 16], [len(stream) + 16, len(stream) + 16])
    with pytest.raises(InputError, match=f"pixel data at byte {len(stream) + 16} does not end with"):
        _check_jpeg_ends(path, [0, len(stream) + 16], [len(stream) + 16, len(stream) + 100])


@pytest.mark.parametrize("layout", ["one strip", "strips", "tiles"])
def test_a_jpeg_tiff_cut_inside_a_segment_is_truncated(tmp_path: Path, layout: str) -> None:
    # libjpeg decodes a cut stream with a warning and flat grey rows: only the file's length tells.
    path = tmp_path / "scan.tif"
    options = {"tile": (64, 64)} if layout == "tiles" else {"rowsperstrip": 300 if layout == "one strip" else 64}
    tifffile.imwrite(path, IMAGE, compression="jpeg", **options)
    check_complete(path)
    assert read_image(path).shape == IMAGE.shape
    data = path.read_bytes()
    offset, count = _jpeg_segments(path)[-1]
    assert offset + count == len(data), "the last segment ends the file"
    path.write_bytes(data[:offset + count // 2])  # every segment starts inside the file
    words = (rf"scan\.tif is truncated: its pixel data runs to byte {offset + count}, but the file ends at byte "
             rf"{offset + count // 2}; copy or export it again")
    for read in (check_complete, read_image):
        with pytest.raises(InputError, match=words):
            read(path)


def test_a_jpeg_tiff_whose_segment_lacks_its_end_marker_is_truncated(tmp_path: Path) -> None:
    # A download preallocated with zeros and never finished: the length is right, the end is not there.
    path = tmp_path / "scan.tif"
    tifffile.imwrite(path, IMAGE, compression="jpeg", rowsperstrip=64)
    data = bytearray(path.read_bytes())
    offset, count = _jpeg_segments(path)[1]
    data[offset + count // 2:offset + count] = bytes(count - count // 2)
    path.write_bytes(bytes(data))
    words = (rf"scan\.tif is truncated: its JPEG-compressed pixel data at byte {offset} does not end with the JPEG "
             r"end marker .*; copy or export it again")
    for read in (check_complete, read_image):
        with pytest.raises(InputError, match=words):
            read(path)


@pytest.mark.parametrize(("name", "write", "words"), [
    ("planes.tif", {"data": np.zeros((2, 64, 64), np.uint16)},
     r"planes\.tif is a multi-page TIFF with 2 full-size image planes; am-segm reads one image per file: save the "
     r"plane to segment as its own TIFF"),
    ("cmyk.tif", {"data": np.zeros((64, 64, 4), np.uint8), "photometric": "separated"},
     r"cmyk\.tif is a CMYK TIFF; export it as grey or RGB"),
    # Read as RGB, YCbCr samples gave the picture's negative and CIELab another picture, without a word.
    ("ycbcr.tif", {"data": np.zeros((64, 64, 3), np.uint8), "photometric": "ycbcr", "subsampling": (1, 1)},
     r"ycbcr\.tif is a YCbCr TIFF; export it as grey or RGB"),
    ("lab.tif", {"data": np.zeros((64, 64, 3), np.uint8), "photometric": "cielab"},
     r"lab\.tif is a CIELab TIFF; export it as grey or RGB"),
    ("raw.tif", {"data": np.zeros((64, 64), np.uint16), "photometric": "cfa"},
     r"raw\.tif is a colour filter array \(raw Bayer\) TIFF; export it as grey or RGB"),
    # A stack stored as its first page, with its shape in the metadata (ImageJ over 4 GB, tifffile's
    # truncate=True): counted by pages, it passed for one image and its first plane was segmented.
    ("truncated.tif", {"data": np.zeros((5, 64, 64), np.uint8), "imagej": True, "metadata": {"axes": "TYX"},
                       "truncate": True},
     r"truncated\.tif is a TIFF stack with 5 full-size image planes; am-segm reads one image per file"),
    ("shaped.tif", {"data": np.zeros((4, 64, 64), np.uint16), "photometric": "minisblack", "truncate": True},
     r"shaped\.tif is a TIFF stack with 4 full-size image planes"),
])
def test_what_a_tiff_header_shows_is_refused_before_any_work(tmp_path: Path, name: str, write: dict,
                                                              words: str) -> None:
    data = write.pop("data")
    layout = _group_image(tmp_path, name, tiff_bytes(data, **write))
    # What the pipeline runs for every group before its backend and workers start.
    with pytest.raises(InputError, match=words):
        check_group_image(layout, "g", settings=Settings())
    for read in (check_complete, read_image):  # the same words from either
        with pytest.raises(InputError, match=words):
            read(layout.source_image("g"))


A_TIFF_AS_PNG = r"x\.png is a TIFF file, not the \.png its name says: rename it to x\.tif"


@pytest.mark.parametrize(("name", "data", "words"), [
    ("x.tif", encode_png(IMAGE), r"x\.tif is a PNG file, not the \.tif its name says: rename it to x\.png"),
    ("x.TIFF", encode_png(IMAGE), r"x\.TIFF is a PNG file, not the \.TIFF its name says: rename it to x\.png"),
    ("x.png", tiff_bytes(IMAGE), A_TIFF_AS_PNG),
    ("x.png", tiff_bytes(IMAGE, bigtiff=True), A_TIFF_AS_PNG),
    ("x.png", tiff_bytes(IMAGE, byteorder=">"), A_TIFF_AS_PNG),
])
def test_a_file_named_as_the_other_format_is_told_to_be_renamed(tmp_path: Path, name: str, data: bytes,
                                                                 words: str) -> None:
    layout = _group_image(tmp_path, name, data)
    with pytest.raises(InputError, match=words):
        check_group_image(layout, "g", settings=Settings())
    for read in (read_header, check_complete, read_image):
        with pytest.raises(InputError, match=words):
            read(layout.source_image("g"))


def _exif(orientation: int, order: str) -> bytes:
    """An EXIF block (TIFF header and one IFD) holding only an Orientation entry, as a PNG's eXIf chunk holds it."""
    mark = b"II*\x00" if order == "<" else b"MM\x00*"
    return (mark + struct.pack(f"{order}IH", 8, 1) + struct.pack(f"{order}HHIHH", 274, 3, 1, orientation, 0)
            + struct.pack(f"{order}I", 0))


def _png_with_exif(image: np.ndarray, exif: bytes) -> bytes:
    """``image`` as PNG with an eXIf chunk after its header: before the image data, where the PNG specification
    puts it."""
    data = encode_png(image)
    chunk = struct.pack(">I", len(exif)) + b"eXIf" + exif + struct.pack(">I", zlib.crc32(b"eXIf" + exif))
    return data[:33] + chunk + data[33:]


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.name == "am.imageio" and record.levelno == logging.WARNING]


@pytest.mark.parametrize(("name", "orientation"), [("scan.tif", 6), ("scan.png", 6), ("little.png", 8),
                                                   ("prefixed.png", 3)])
def test_an_exif_orientation_is_warned_about_once_and_the_pixels_read_as_stored(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, orientation: int) -> None:
    image = RNG.integers(0, 256, (40, 70), dtype=np.uint8)
    path = tmp_path / name
    if name.endswith(".tif"):
        tifffile.imwrite(path, image, extratags=[(274, "H", 1, orientation, True)])
    else:
        exif = _exif(orientation, "<" if name == "little.png" else ">")
        path.write_bytes(_png_with_exif(image, b"Exif\x00\x00" + exif if name == "prefixed.png" else exif))
    with caplog.at_level(logging.WARNING, logger="am.imageio"):
        check_complete(path)
        read = read_image(path)
    np.testing.assert_array_equal(read, image)  # not turned
    assert _warnings(caplog) == [
        f"image {path} has EXIF orientation {orientation}: viewers show it "
        f"{'turned by 180 degrees' if orientation == 3 else 'turned by 90 degrees'}"
        + {6: " clockwise", 8: " counter-clockwise", 3: ""}[orientation]
        + ", but am-segm reads its pixels as stored; count --rows/--cols on the image as stored, not as a viewer "
        "shows it"]


def test_an_orientation_as_stored_or_none_is_not_warned_about(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    image = RNG.integers(0, 256, (40, 70), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "tagged.tif", image, extratags=[(274, "H", 1, 1, True)])
    (tmp_path / "tagged.png").write_bytes(_png_with_exif(image, _exif(1, ">")))
    tifffile.imwrite(tmp_path / "plain.tif", image)
    write_png(tmp_path / "plain.png", image)
    with caplog.at_level(logging.WARNING, logger="am.imageio"):
        for name in ("tagged.tif", "tagged.png", "plain.tif", "plain.png"):
            check_complete(tmp_path / name)
            read_image(tmp_path / name)
    assert _warnings(caplog) == []


@pytest.mark.parametrize("folder", ["g", "it's $HOME \"g\""])
def test_the_jpeg_conversion_suggested_works_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             folder: str) -> None:
    image = RNG.integers(0, 256, (30, 40), dtype=np.uint8)
    (tmp_path / "data" / "source" / folder).mkdir(parents=True)
    jpeg = tmp_path / "data" / "source" / folder / "scan.jpg"
    assert cv2.imwrite(str(jpeg), image)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(tmp_path)  # the dataset given as a relative path, the command run from another folder
    with pytest.raises(InputError, match=r"scan\.jpg, a JPEG file, which is not read") as info:
        DatasetLayout(Path("data")).source_image(folder)
    command = str(info.value).split("e.g. ", 1)[1].rsplit(", and keep only", 1)[0]
    assert command.startswith("python -c ")
    run = shlex.quote(sys.executable) + command[len("python"):]
    subprocess.run(["bash", "-c", run], cwd=elsewhere, check=True, timeout=60)
    np.testing.assert_array_equal(cv2.imread(str(jpeg.with_suffix(".png")), cv2.IMREAD_UNCHANGED),
                                  cv2.imread(str(jpeg), cv2.IMREAD_UNCHANGED))
