"""Reading and writing images: round trips, determinism and every refused input, with real files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from am.errors import InputError
from am.imageio import (
    MAX_PIXELS,
    PNG_ROW_FILTERS,
    check_complete,
    decode_png,
    encode_png,
    header_size,
    is_grey_8bit_png,
    read_header,
    read_image,
    write_png,
    write_tiff,
)
from tests.images.tiffs import tiff_bytes, with_damaged_strip, with_tag_count, with_tag_renamed

RNG = np.random.default_rng(7)


def _images() -> dict[str, np.ndarray]:
    return {
        "grey8": RNG.integers(0, 256, (37, 53), dtype=np.uint8),
        "grey16": RNG.integers(0, 65536, (41, 29), dtype=np.uint16),
        "rgb8": RNG.integers(0, 256, (23, 31, 3), dtype=np.uint8),
        "rgba8": RNG.integers(0, 256, (19, 17, 4), dtype=np.uint8),
        "rgb16": RNG.integers(0, 65536, (13, 11, 3), dtype=np.uint16),
    }


@pytest.mark.parametrize("kind", sorted(_images()))
@pytest.mark.parametrize("suffix", [".png", ".tif", ".tiff"])
def test_round_trip(tmp_path: Path, kind: str, suffix: str) -> None:
    image = _images()[kind]
    path = tmp_path / "nested" / "folder" / f"{kind}{suffix}"
    (write_png if suffix == ".png" else write_tiff)(path, image)
    back = read_image(path)
    assert back.dtype == image.dtype
    np.testing.assert_array_equal(back, image)
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no temporary file may be left behind"


def test_png_colour_is_rgb_on_disk(tmp_path: Path) -> None:
    """Red written by us must be red for any other reader (OpenCV stores BGR)."""
    image = np.zeros((4, 4, 3), np.uint8)
    image[..., 0] = 200
    write_png(tmp_path / "red.png", image)
    bgr = cv2.imread(str(tmp_path / "red.png"), cv2.IMREAD_UNCHANGED)
    assert bgr[0, 0].tolist() == [0, 0, 200]
    assert read_image(tmp_path / "red.png")[0, 0].tolist() == [200, 0, 0]


def test_tiff_colour_is_rgb_on_disk(tmp_path: Path) -> None:
    image = np.zeros((4, 4, 3), np.uint8)
    image[..., 0] = 200
    write_tiff(tmp_path / "red.tif", image)
    assert tifffile.imread(tmp_path / "red.tif")[0, 0].tolist() == [200, 0, 0]


def test_tiff_round_trips_compressed_or_not(tmp_path: Path) -> None:
    image = RNG.integers(0, 256, (40, 50), dtype=np.uint8)
    write_tiff(tmp_path / "z.tiff", image)
    write_tiff(tmp_path / "raw.tiff", image, compress=False)
    with tifffile.TiffFile(tmp_path / "z.tiff") as z, tifffile.TiffFile(tmp_path / "raw.tiff") as raw:
        assert z.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert raw.pages[0].compression == tifffile.COMPRESSION.NONE
    np.testing.assert_array_equal(read_image(tmp_path / "z.tiff"), image)
    np.testing.assert_array_equal(read_image(tmp_path / "raw.tiff"), image)


def test_tiff_dtypes_kept_and_floats_become_float32(tmp_path: Path) -> None:
    signed = RNG.integers(-1000, 1000, (8, 9)).astype(np.int16)
    tifffile.imwrite(tmp_path / "s.tif", signed)
    back = read_image(tmp_path / "s.tif")
    assert back.dtype == np.int16
    np.testing.assert_array_equal(back, signed)
    f64 = RNG.random((8, 9))
    tifffile.imwrite(tmp_path / "f.tif", f64)
    back = read_image(tmp_path / "f.tif")
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, f64, rtol=1e-6)


def test_float64_values_beyond_float32_are_refused_as_such(tmp_path: Path) -> None:
    # Cast to float32 they became infinite, and the image was refused for "NaN or infinite values".
    huge = RNG.random((8, 9))
    huge[2, 3], huge[4, 5], huge[6, 7] = 1e39, -5e38, np.inf
    tifffile.imwrite(tmp_path / "huge.tif", huge)
    with pytest.raises(InputError) as refused:
        read_image(tmp_path / "huge.tif")
    assert str(refused.value).startswith(f"image {tmp_path / 'huge.tif'} has 2 pixel(s) beyond +-3.4e+38, more than "
                                         "32-bit floats hold: scale its values down")
    near = RNG.random((8, 9)) * 3e38
    tifffile.imwrite(tmp_path / "near.tif", near)
    assert np.isfinite(read_image(tmp_path / "near.tif")).all()


def test_tiff_planar_rgb_becomes_channels_last(tmp_path: Path) -> None:
    image = RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(image, -1, 0), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tif"), image)


def test_encode_png_is_deterministic_and_decodes() -> None:
    tile = RNG.integers(0, 256, (64, 64), dtype=np.uint8)
    first = encode_png(tile)
    assert encode_png(tile.copy()) == first
    np.testing.assert_array_equal(decode_png(first, name="job/g/0001.png"), tile)


@pytest.mark.parametrize("row_filter", PNG_ROW_FILTERS)
def test_every_row_filter_round_trips(row_filter: str) -> None:
    """Tiles, masks and colour overlays are written with chosen row filters: pixels must survive each."""
    tile = cv2.GaussianBlur(RNG.integers(0, 256, (96, 80), dtype=np.uint8), (5, 5), 1.5)
    for huffman_only in (False, True):
        data = encode_png(tile, compression=1, huffman_only=huffman_only, row_filter=row_filter)
        assert data == encode_png(tile, compression=1, huffman_only=huffman_only, row_filter=row_filter)
        np.testing.assert_array_equal(decode_png(data, name="g/0001.png"), tile)
    colour = np.dstack([tile, tile[::-1], tile[:, ::-1]])
    decoded = cv2.imdecode(np.frombuffer(encode_png(colour, bgr=True, row_filter=row_filter), np.uint8),
                           cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(decoded, colour)


def test_unknown_row_filter_is_refused() -> None:
    with pytest.raises(ValueError, match="row_filter 'fast'"):
        encode_png(np.zeros((4, 4), np.uint8), row_filter="fast")


def test_write_png_is_deterministic(tmp_path: Path) -> None:
    mask = (RNG.random((50, 70)) > 0.5).astype(np.uint8) * 255
    write_png(tmp_path / "a.png", mask)
    write_png(tmp_path / "b.png", mask)
    write_png(tmp_path / "a.png", mask)  # overwriting in place works too
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes() == encode_png(mask)


def test_decode_png_accepts_grey_stored_as_colour_and_small_16_bit() -> None:
    tile = RNG.integers(0, 256, (16, 16), dtype=np.uint8)
    np.testing.assert_array_equal(decode_png(encode_png(np.dstack([tile] * 3)), name="t"), tile)
    np.testing.assert_array_equal(decode_png(encode_png(tile.astype(np.uint16)), name="t"), tile)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty"),
        (b"not a png at all", "cannot be decoded"),
        (encode_png(np.full((8, 8), 300, np.uint16)), "above 255"),
        (encode_png(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)), "colour"),
    ],
)
def test_decode_png_refuses(data: bytes, match: str) -> None:
    with pytest.raises(InputError, match=match) as info:
        decode_png(data, name="job/g/0042.png")
    assert "job/g/0042.png" in str(info.value)


def test_decode_png_refuses_truncated_bytes() -> None:
    data = encode_png(RNG.integers(0, 256, (64, 64), dtype=np.uint8))
    with pytest.raises(InputError, match="0003"):
        decode_png(data[: len(data) // 2], name="0003.png")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist") as info:
        read_image(tmp_path / "nope.tif")
    assert "nope.tif" in str(info.value)


def test_zero_size_file(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty \(0 bytes\)"):
        read_image(tmp_path / "empty.png")


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "scan.jpg"
    cv2.imwrite(str(path), np.zeros((8, 8), np.uint8))
    with pytest.raises(InputError, match=r"unsupported extension '\.jpg'.*TIFF"):
        read_image(path)


def test_folder_is_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(InputError, match="not a file"):
        read_image(tmp_path / "dir.png")


def test_truncated_png(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    write_png(good, RNG.integers(0, 256, (200, 200), dtype=np.uint8))
    data = good.read_bytes()
    bad = tmp_path / "cut.png"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"is truncated: its 'IDAT' chunk at byte \d+ runs past the end") as info:
        read_image(bad)
    assert "cut.png" in str(info.value)


@pytest.mark.parametrize("kept", [5, 8, 20, 25])
def test_a_png_cut_inside_its_header_is_called_truncated(tmp_path: Path, kept: int) -> None:
    whole = tmp_path / "whole.png"
    write_png(whole, np.zeros((40, 40), np.uint8))
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[:kept])
    for read in (read_header, read_image, check_complete):
        with pytest.raises(InputError, match=rf"cut\.png is truncated: it ends at byte {kept}, inside its PNG header"):
            read(cut)


def test_text_file_named_png(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("these are not pixels\n" * 3)
    with pytest.raises(InputError, match="not a PNG"):
        read_image(path)


def test_text_file_named_tif(tmp_path: Path) -> None:
    path = tmp_path / "notes.tif"
    path.write_text("these are not pixels\n")
    with pytest.raises(InputError, match="cannot be read as TIFF") as info:
        read_image(path)
    assert "notes.tif" in str(info.value)


def test_truncated_tiff(tmp_path: Path) -> None:
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, RNG.integers(0, 256, (300, 300), dtype=np.uint8))
    data = good.read_bytes()
    bad = tmp_path / "cut.tif"
    bad.write_bytes(data[:100])
    with pytest.raises(InputError, match=r"cut\.tif"):
        read_image(bad)


@pytest.mark.parametrize("write", ["png", "png16", "strips", "deflate", "tiles"])
def test_a_whole_file_is_complete_and_one_cut_short_is_named(tmp_path: Path, write: str) -> None:
    image = RNG.integers(0, 256, (300, 300), dtype=np.uint8)
    path = tmp_path / ("scan.png" if write.startswith("png") else "scan.tif")
    if write == "png":
        write_png(path, image)
    elif write == "png16":
        write_png(path, image.astype(np.uint16) * 257)
    else:
        tifffile.imwrite(path, image, compression="zlib" if write == "deflate" else None,
                         tile=(64, 64) if write == "tiles" else None, rowsperstrip=32)
    check_complete(path)
    data = path.read_bytes()
    if write.startswith("png"):
        # Bytes after the end chunk, which some writers add and decoders ignore, are no damage.
        path.write_bytes(data + b"trailing note")
        check_complete(path)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"scan\.(png|tif) is truncated: .*; copy or export it again"):
        check_complete(path)
    # One byte short: found up front, except inside a compressed strip, which only its decoder can
    # tell from a writer's overstated byte count; there reading the image says so.
    path.write_bytes(data[:-1])
    if write == "deflate":
        check_complete(path)
        with pytest.raises(InputError, match=r"scan\.tif cannot be read as TIFF"):
            read_image(path)
    else:
        with pytest.raises(InputError, match=r"scan\.(png|tif) is truncated: .*; copy or export it again"):
            check_complete(path)


def test_what_decoders_read_despite_a_quirk_is_not_refused(tmp_path: Path) -> None:
    import struct as structs

    # libpng warns and decodes past a bad CRC in an ancillary chunk or in IEND.
    image = RNG.integers(0, 256, (64, 64), dtype=np.uint8)
    data = bytearray(encode_png(image))
    text = b"tEXt" + b"Comment\x00hello"
    chunk = structs.pack(">I", len(text) - 4) + text + structs.pack(">I", zlib.crc32(text) ^ 1)
    iend = data.index(b"IEND") - 4
    data[-4:] = bytes(4)  # IEND's CRC
    quirky = tmp_path / "quirky.png"
    quirky.write_bytes(bytes(data[:33]) + chunk + bytes(data[33:iend]) + bytes(data[iend:]))
    check_complete(quirky)
    assert np.array_equal(read_image(quirky), image)
    # Some writers give the last strip a full strip's byte count: the file ends before that, not before its rows.
    tif = tmp_path / "quirky.tif"
    tall = RNG.integers(0, 256, (60, 64), dtype=np.uint8)
    tifffile.imwrite(tif, tall, rowsperstrip=16)
    data = bytearray(tif.read_bytes())
    with tifffile.TiffFile(tif) as opened:
        counts = opened.pages[0].tags["StripByteCounts"]
        step = structs.calcsize({3: "<H", 4: "<I"}[int(counts.dtype)])
        structs.pack_into({3: "<H", 4: "<I"}[int(counts.dtype)], data, counts.valueoffset + 3 * step, 16 * 64)
    tif.write_bytes(bytes(data))
    check_complete(tif)
    assert np.array_equal(read_image(tif), tall)


def test_a_png_with_a_flipped_bit_is_named_with_its_chunk(tmp_path: Path) -> None:
    path = tmp_path / "scan.png"
    write_png(path, RNG.integers(0, 256, (300, 300), dtype=np.uint8))
    data = bytearray(path.read_bytes())
    idat = data.index(b"IDAT") - 4
    data[idat + 100] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=rf"scan\.png is damaged: its 'IDAT' chunk at byte {idat} fails its CRC check; "
                                         "copy or export it again"):
        check_complete(path)


def test_two_page_tiff(tmp_path: Path) -> None:
    path = tmp_path / "stack.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(np.zeros((8, 8), np.uint8))
        tif.write(np.ones((8, 8), np.uint8))
    with pytest.raises(InputError, match="multi-page TIFF with 2 full-size image planes"):
        read_image(path)


def test_a_tiff_thumbnail_page_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "with_thumbnail.tif"
    image = RNG.integers(0, 256, (64, 48), dtype=np.uint8)
    with tifffile.TiffWriter(path) as tif:
        tif.write(image)
        tif.write(image[::4, ::4], subfiletype=1)  # reduced-resolution copy
    np.testing.assert_array_equal(read_image(path), image)


@pytest.mark.parametrize("extra", ["unflagged thumbnail after", "unflagged thumbnail before", "mask page"])
def test_a_tiff_page_smaller_than_the_image_or_a_mask_is_ignored(tmp_path: Path, extra: str) -> None:
    # Some writers leave a thumbnail's reduced-resolution flag unset or add a transparency mask
    # page: neither is a second image plane, whichever comes first.
    path = tmp_path / "extra_page.tif"
    image = RNG.integers(0, 256, (64, 48), dtype=np.uint8)
    with tifffile.TiffWriter(path) as tif:
        if extra == "unflagged thumbnail before":
            tif.write(image[::4, ::4])
        tif.write(image)
        if extra == "unflagged thumbnail after":
            tif.write(image[::4, ::4])
        elif extra == "mask page":
            tif.write(np.ones((64, 48), bool), subfiletype=4, photometric="minisblack")
    assert read_header(path).pages == 1
    np.testing.assert_array_equal(read_image(path), image)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_a_tiff_stored_with_0_as_white_is_read_the_usual_way_round(tmp_path: Path, dtype) -> None:
    path = tmp_path / "miniswhite.tif"
    top = np.iinfo(dtype).max
    stored = RNG.integers(0, top, (20, 30), dtype=dtype)
    tifffile.imwrite(path, stored, photometric="miniswhite")
    read = read_image(path)
    assert read.dtype == dtype
    np.testing.assert_array_equal(read, top - stored)


def test_a_palette_tiff_is_read_as_its_colours(tmp_path: Path) -> None:
    path = tmp_path / "palette.tif"
    indices = RNG.integers(0, 256, (20, 30), dtype=np.uint8)
    colormap = RNG.integers(0, 65536, (3, 256), dtype=np.uint16)
    tifffile.imwrite(path, indices, photometric="palette", colormap=colormap)
    read = read_image(path)
    assert read.shape == (20, 30, 3) and read.dtype == np.uint16
    np.testing.assert_array_equal(read, np.moveaxis(colormap[:, indices], 0, -1))


def test_a_cmyk_tiff_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.tif"
    tifffile.imwrite(path, np.zeros((8, 8, 4), np.uint8), photometric="separated")
    with pytest.raises(InputError, match=r"cmyk\.tif is a CMYK TIFF; export it as grey or RGB"):
        read_image(path)


@pytest.mark.parametrize("compression", ["lzw", "zstd", "jpeg"])
def test_compressed_tiffs_as_microscopes_write_them(tmp_path: Path, compression: str) -> None:
    path = tmp_path / f"{compression}.tif"
    image = np.tile(np.arange(64, dtype=np.uint8), (48, 1))
    tifffile.imwrite(path, image, compression=compression)
    read = read_image(path)
    assert read.shape == image.shape
    if compression == "jpeg":  # lossy
        assert np.abs(read.astype(int) - image).max() <= 8
    else:
        np.testing.assert_array_equal(read, image)


def test_volume_in_one_tiff_page(tmp_path: Path) -> None:
    path = tmp_path / "volume.tif"
    tifffile.imwrite(path, np.zeros((3, 16, 16), np.uint8), tile=(16, 16), volumetric=True, photometric="minisblack")
    with pytest.raises(InputError, match="volume.tif is a TIFF stack with 3 full-size image planes"):
        read_image(path)


def test_too_many_channels(tmp_path: Path) -> None:
    path = tmp_path / "five.tif"
    tifffile.imwrite(path, np.zeros((8, 8, 5), np.uint8), photometric="minisblack", planarconfig="contig")
    with pytest.raises(InputError, match="5 channels"):
        read_image(path)


def _png_with_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk only: enough for the size check to run before any decoding."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def test_png_zero_dimension(tmp_path: Path) -> None:
    path = tmp_path / "flat.png"
    path.write_bytes(_png_with_header(0, 10))
    with pytest.raises(InputError, match="no pixels"):
        read_image(path)


def test_png_too_large(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    path.write_bytes(_png_with_header(50000, 40000))
    with pytest.raises(InputError, match=f"limit of {MAX_PIXELS}"):
        read_image(path)


@pytest.mark.parametrize(("width", "height", "match"), [
    (50000, 40000, f"limit of {MAX_PIXELS}"),
    (33000, 33000, "too large to decode as PNG .*save it as TIFF instead"),  # within MAX_PIXELS, past OpenCV's
])
def test_a_png_too_large_is_refused_from_its_header(tmp_path: Path, width: int, height: int, match: str) -> None:
    # read_header is what runs before any worker starts: it must refuse what decoding would.
    path = tmp_path / "huge.png"
    path.write_bytes(_png_with_header(width, height))
    for read in (read_header, read_image):
        with pytest.raises(InputError, match=match):
            read(path)


def test_tiff_too_large_is_refused_before_reading(tmp_path: Path) -> None:
    """The header says 40001 x 40000; refusing must not need the (absent) pixel data."""
    path = tmp_path / "huge.tif"
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(shape=(40001, 40000), dtype=np.uint8)  # header and empty strip offsets only
    with pytest.raises(InputError, match="above the limit"):
        read_image(path)


def test_bool_tiff_becomes_0_255(tmp_path: Path) -> None:
    mask = RNG.random((9, 9)) > 0.5
    tifffile.imwrite(tmp_path / "bits.tif", mask)
    back = read_image(tmp_path / "bits.tif")
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, mask.astype(np.uint8) * 255)


def test_writers_refuse_bad_arrays(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="float32"):
        write_png(tmp_path / "f.png", np.zeros((4, 4), np.float32))
    with pytest.raises(InputError, match="shape"):
        write_tiff(tmp_path / "s.tif", np.zeros((4, 4, 2), np.uint8))
    assert not any(tmp_path.iterdir())


def test_header_size_reads_png_and_tiff_headers_and_says_none_when_it_cannot(tmp_path):
    image = np.zeros((30, 50), np.uint8)
    write_png(tmp_path / "a.png", image)
    write_tiff(tmp_path / "a.tif", image)
    (tmp_path / "bad.png").write_bytes(b"not a png at all, just some bytes")
    assert header_size(tmp_path / "a.png") == (30, 50)
    assert header_size(tmp_path / "a.tif") == (30, 50)
    assert header_size(tmp_path / "bad.png") is None
    assert header_size(tmp_path / "missing.tif") is None


def test_is_grey_8bit_png_tells_the_stored_form_from_the_header():
    assert is_grey_8bit_png(encode_png(np.zeros((8, 8), np.uint8)))
    assert not is_grey_8bit_png(encode_png(np.zeros((8, 8), np.uint16)))
    assert not is_grey_8bit_png(encode_png(np.zeros((8, 8, 3), np.uint8)))
    assert not is_grey_8bit_png(b"\x89PNG")


def test_encode_png_of_a_bgr_array_equals_encoding_its_rgb_form(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    bgr = rgb[:, :, ::-1]
    write_png(tmp_path / "fast.png", bgr, compression=1, bgr=True)
    assert np.array_equal(read_image(tmp_path / "fast.png"), rgb)
    assert decode_png(encode_png(rgb[:, :, 0], compression=1), name="grey").shape == (20, 30)


@pytest.mark.parametrize("compression", ["zlib", "lzw", "packbits"])
def test_a_tiff_whose_compressed_pixels_are_damaged_is_an_input_error_naming_the_file(tmp_path, compression):
    # imagecodecs raises its own errors (DeflateError, ImcdError), which are no TiffFileError.
    path = tmp_path / f"{compression}.tif"
    image = RNG.integers(0, 65536, (60, 80), dtype=np.uint16)
    path.write_bytes(with_damaged_strip(tiff_bytes(image, compression=compression)))
    assert read_header(path).decoded_bytes == image.nbytes, "the header is intact"
    with pytest.raises(InputError, match="pixel data cannot be decoded") as info:
        read_image(path)
    assert str(path) in str(info.value) and "copy or export it again" in str(info.value)


@pytest.mark.parametrize("tag, words", [
    (262, "photometric field is (1, 0), not one number"),  # read by am-segm: two values where one belongs
    (277, "cannot be read as TIFF (TypeError"),  # tifffile itself trips over it while parsing
])
def test_a_tiff_tag_with_several_values_where_one_belongs_is_an_input_error(tmp_path, tag, words):
    path = tmp_path / "tag.tif"
    path.write_bytes(with_tag_count(tiff_bytes(np.ones((30, 40), np.uint16)), tag=tag, count=2))
    with pytest.raises(InputError, match="tag.tif") as info:
        read_image(path)
    assert words in str(info.value)


def test_a_tiled_tiff_without_its_tile_length_is_an_input_error(tmp_path):
    # tifffile divides by the missing TileLength (ZeroDivisionError) when it decodes the tiles.
    path = tmp_path / "tiles.tif"
    data = tiff_bytes(np.ones((40, 50), np.uint16), tile=(16, 16))
    path.write_bytes(with_tag_renamed(data, tag=323, to=346))
    with pytest.raises(InputError, match="tiles.tif cannot be read as TIFF"):
        read_image(path)


def test_read_header_says_what_decoding_will_take_without_decoding(tmp_path):
    cases = {
        "grey8.png": (np.zeros((30, 50), np.uint8), 1, np.uint8),
        "rgb16.png": (np.zeros((7, 9, 3), np.uint16), 3, np.uint16),
        "rgba8.png": (np.zeros((5, 6, 4), np.uint8), 4, np.uint8),
        "rgba16.tif": (np.zeros((40, 30, 4), np.uint16), 4, np.uint16),
        "float.tif": (np.zeros((8, 8), np.float32), 1, np.float32),
    }
    for name, (image, channels, dtype) in cases.items():
        (write_png if name.endswith(".png") else write_tiff)(tmp_path / name, image)
        header = read_header(tmp_path / name)
        assert (header.height, header.width, header.channels, header.dtype) == (*image.shape[:2], channels, dtype)
        assert header.decoded_bytes == image.nbytes and header.pages == 1
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tif:
        for _ in range(3):
            tif.write(np.zeros((10, 10), np.uint8))
    assert read_header(tmp_path / "pages.tif").pages == 3
    for name, data, words in (("bad.png", b"\x89PNG\r\n\x1a\n" + bytes(30), "not a PNG file"),
                              ("bad.tif", b"II*\x00" + bytes(4), "no readable image plane"),
                              ("empty.tif", b"", "empty")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InputError, match=words):
            read_header(tmp_path / name)


def test_a_png_that_shrinks_while_it_is_checked_is_called_truncated_not_read_for_ever(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from am import imageio

    path = tmp_path / "copied-over.png"
    data = encode_png(RNG.integers(0, 256, (200, 200), dtype=np.uint8))
    path.write_bytes(data[:200])  # what is left by the time the chunks are read
    stat = Path.stat

    def size_before_the_copy(self: Path, **kwargs):
        real = stat(self, **kwargs)
        if self != path:
            return real
        fields = list(real)
        fields[6] = len(data)  # st_size, as read before the file was copied over
        return os.stat_result(fields)

    monkeypatch.setattr(Path, "stat", size_before_the_copy)
    assert imageio._png_damage(path) == "truncated: its 'IDAT' chunk at byte 33 runs past the end of the file"


def _reading_peak(path: Path) -> tuple[np.ndarray, int]:
    """What read_image returns and the most bytes of Python-allocated memory (numpy arrays) it held at once."""
    import tracemalloc

    tracemalloc.start()
    try:
        image = read_image(path)
        return image, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("name, write, returned, read_as", [
    # 1 byte of index per pixel becomes 3 channels of uint16 colour, held with the indices.
    ("palette.tif", lambda p: tifffile.imwrite(p, np.zeros((600, 700), np.uint8), photometric="palette",
                                               colormap=np.zeros((3, 256), np.uint16), compression="zlib"),
     ((600, 700, 3), np.uint16), "3 channel(s) of uint16 (palette colour)"),
    ("half.tif", lambda p: tifffile.imwrite(p, np.zeros((600, 700), np.float16), compression="zlib"),
     ((600, 700), np.float32), "1 channel(s) of float32"),
    ("double.tif", lambda p: tifffile.imwrite(p, np.zeros((600, 700), np.float64), compression="zlib"),
     ((600, 700), np.float32), "1 channel(s) of float32"),
    ("planar.tif", lambda p: tifffile.imwrite(p, np.zeros((3, 600, 700), np.uint8), photometric="rgb",
                                              planarconfig="separate", compression="zlib"),
     ((600, 700, 3), np.uint8), None),
    ("grey_alpha.tif", lambda p: tifffile.imwrite(p, np.zeros((600, 700, 2), np.uint16), photometric="minisblack",
                                                  planarconfig="contig", extrasamples=["unassalpha"],
                                                  compression="zlib"),
     ((600, 700), np.uint16), "1 channel(s) of uint16"),
    ("mask.tif", lambda p: tifffile.imwrite(p, np.ones((600, 700), bool), compression="zlib"),
     ((600, 700), np.uint8), None),
    # 1-bit pixels are unpacked one strip or tile at a time into an array of their own: in one strip, as
    # tifffile writes an uncompressed mask, that is a second copy of the whole image.
    ("bilevel.tif", lambda p: tifffile.imwrite(p, RNG.random((2000, 2001)) > 0.5),
     ((2000, 2001), np.uint8), None),
    ("bilevel_strip.tif", lambda p: tifffile.imwrite(p, RNG.random((2000, 2000)) > 0.5, compression="zlib",
                                                     rowsperstrip=2000),
     ((2000, 2000), np.uint8), None),
    ("bilevel_tiles.tif", lambda p: tifffile.imwrite(p, RNG.random((2000, 2000)) > 0.5, tile=(1024, 1024)),
     ((2000, 2000), np.uint8), None),
    ("rgb.png", lambda p: cv2.imwrite(str(p), np.zeros((600, 700, 3), np.uint8)), ((600, 700, 3), np.uint8), None),
])
def test_read_header_counts_the_memory_reading_takes_not_only_the_stored_pixels(tmp_path, name, write, returned,
                                                                                  read_as):
    """A server refuses an image from its header by decoded_bytes: a palette or float16 TIFF, read as 16-bit
    colour or float32, must not decode to several times what the header was taken to promise."""
    path = tmp_path / name
    write(path)
    header = read_header(path)
    image, peak = _reading_peak(path)
    assert (image.shape, image.dtype) == (returned[0], np.dtype(returned[1]))
    assert header.read_as == read_as
    assert header.decoded_bytes >= image.nbytes
    # What the readers themselves keep besides the arrays (tifffile's strips, a block being converted) is small.
    assert peak <= header.decoded_bytes * 1.05 + (1 << 20), (peak, header.decoded_bytes)


def test_a_colour_png_taller_than_a_conversion_block_reads_in_rgb_order(tmp_path):
    rgb = RNG.integers(0, 256, (5000, 100, 3), dtype=np.uint8)  # more rows than one block of 1 MiB
    cv2.imwrite(str(tmp_path / "tall.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(read_image(tmp_path / "tall.png"), rgb)


def _with_chunk_after_ihdr(png: bytes, kind: bytes, data: bytes) -> bytes:
    """``png`` with one more chunk right after its IHDR (8 + 13 + 4 bytes after the signature), CRC and all."""
    chunk = struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    end = 8 + 8 + 13 + 4
    return png[:end] + chunk + png[end:]


def test_an_animated_png_is_refused_naming_its_frames(tmp_path: Path) -> None:
    # The decoder returned the first frame alone, without a word, where a TIFF of several planes is refused.
    png = cv2.imencode(".png", RNG.integers(0, 256, (40, 50), dtype=np.uint8))[1].tobytes()
    (tmp_path / "movie.png").write_bytes(_with_chunk_after_ihdr(png, b"acTL", struct.pack(">II", 3, 0)))
    for read in (read_image, read_header, check_complete):
        with pytest.raises(InputError, match=r"movie\.png is an animated PNG with 3 frames; am-segm reads one image "
                                             r"per file: save the frame to segment as its own PNG"):
            read(tmp_path / "movie.png")
    (tmp_path / "one.png").write_bytes(_with_chunk_after_ihdr(png, b"acTL", struct.pack(">II", 1, 0)))
    assert read_image(tmp_path / "one.png").shape == (40, 50)


def test_other_images_than_the_largest_are_warned_of_unless_thumbnails(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    # An OME-TIFF of two scenes: the larger was segmented and the other left without a word.
    image = RNG.integers(0, 256, (64, 64), dtype=np.uint8)
    with tifffile.TiffWriter(tmp_path / "scenes.tif", ome=True) as tif:
        tif.write(image[:40, :30])
        tif.write(image)
    with tifffile.TiffWriter(tmp_path / "thumbnail.tif") as tif:
        tif.write(image)
        tif.write(image[::4, ::4])  # unflagged, as some writers leave a thumbnail
    with caplog.at_level("WARNING", logger="am.imageio"):
        np.testing.assert_array_equal(read_image(tmp_path / "scenes.tif"), image)
        check_complete(tmp_path / "scenes.tif")
        np.testing.assert_array_equal(read_image(tmp_path / "thumbnail.tif"), image)
    said = [r.getMessage() for r in caplog.records]
    assert said == [f"image {tmp_path / 'scenes.tif'} holds 1 other image(s) (30 x 40, width x height) besides the "
                    "largest, which alone is segmented; save each image to segment as its own TIFF"]


def test_a_tiff_feature_tifffile_cannot_decode_is_an_input_error(tmp_path: Path) -> None:
    # Chroma-subsampled YCbCr without JPEG: tifffile's NotImplementedError ended in a traceback. Refused
    # from the header now (YCbCr is read only JPEG-compressed), the decode path is shown by a plain RGB page.
    path = tmp_path / "sub.tif"
    tifffile.imwrite(path, RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8), photometric="rgb")

    def not_implemented(*args, **kwargs):
        raise NotImplementedError("chroma subsampling not supported without JPEG compression")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tifffile.TiffPage, "asarray", not_implemented)
        with pytest.raises(InputError, match=r"sub\.tif uses a TIFF feature no reader here decodes \(chroma "
                                             r"subsampling not supported without JPEG compression\); export it again"):
            read_image(path)


def test_a_jpeg_compressed_ycbcr_tiff_is_still_read_as_rgb(tmp_path: Path) -> None:
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 0] = 200
    tifffile.imwrite(tmp_path / "jpeg.tif", rgb, photometric="rgb", compression="jpeg")  # stored as YCbCr
    with tifffile.TiffFile(tmp_path / "jpeg.tif") as tif:
        assert tif.pages[0].photometric == 6
    back = read_image(tmp_path / "jpeg.tif")
    assert back.shape == (64, 64, 3) and abs(int(back[..., 0].mean()) - 200) <= 3
