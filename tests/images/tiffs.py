"""Damaged TIFFs for the tests of image reading and of the HTTP uploads: intact headers, broken content."""

from __future__ import annotations

import io
import struct

import numpy as np
import tifffile


def tiff_bytes(image: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, **options)
    return buffer.getvalue()


def with_damaged_strip(data: bytes) -> bytes:
    """``data`` (a TIFF) with its first strip overwritten by 0xFF bytes: the header still reads, the pixels do not.

    (Inverting a few bytes is not enough for PackBits, which then often decodes to other pixels.)
    """
    damaged = bytearray(data)
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        offset, length = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    damaged[offset:offset + length] = b"\xff" * length
    return bytes(damaged)


def with_tag_count(data: bytes, *, tag: int, count: int) -> bytes:
    """``data`` (a classic little-endian TIFF) with the first page's ``tag`` claiming ``count`` values.

    Its value field keeps its bytes, so a SHORT tag with count 2 reads as two numbers where the
    TIFF specification allows one: what a bit flip in a count does.
    """
    patched = bytearray(data)
    patched[_entry(data, tag) + 4:_entry(data, tag) + 8] = struct.pack("<I", count)
    return bytes(patched)


def with_tag_renamed(data: bytes, *, tag: int, to: int) -> bytes:
    """``data`` (a classic little-endian TIFF) with the first page's ``tag`` turned into tag ``to``:
    the field is gone, as when a bit flip hits a tag number."""
    patched = bytearray(data)
    patched[_entry(data, tag):_entry(data, tag) + 2] = struct.pack("<H", to)
    return bytes(patched)


def _entry(data: bytes, tag: int) -> int:
    """Where the first IFD's entry for ``tag`` starts."""
    assert data[:4] == b"II*\x00", "a classic little-endian TIFF"
    ifd = struct.unpack("<I", data[4:8])[0]
    for index in range(struct.unpack("<H", data[ifd:ifd + 2])[0]):
        entry = ifd + 2 + 12 * index
        if struct.unpack("<H", data[entry:entry + 2])[0] == tag:
            return entry
    raise AssertionError(f"the TIFF has no tag {tag}")
